//! Collectors over sysfs-shaped fixture trees built in a temporary directory
//! (files and relative symlinks laid out as the kernel lays them out), and
//! once over this machine's real /.

use std::path::Path;

use anvil_inventory::{BootMode, DiskTransport, Error, collect, collect_with, physical_interfaces};

const QEMU_DMI_TABLE: &[u8] = include_bytes!("fixtures/qemu-seabios-pc.DMI");

fn file(root: &Path, path: &str, contents: impl AsRef<[u8]>) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, contents).unwrap();
}

fn dir(root: &Path, path: &str) {
    std::fs::create_dir_all(root.join(path.trim_start_matches('/'))).unwrap();
}

/// A relative symlink at `path` pointing to `target`, as sysfs has them.
fn link(root: &Path, path: &str, target: &str) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, p).unwrap();
}

const CPU_BLOCK: &str = "processor\t: {n}
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 106
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
stepping\t: 6
cpu MHz\t\t: 2000.012
cache size\t: 49152 KB
physical id\t: {pkg}
siblings\t: 4
core id\t\t: {core}
cpu cores\t: 2
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge lm constant_tsc nopl xtopology cpuid pni pclmulqdq vmx ssse3 fma cx16 sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand lahf_lm avx2 bmi1 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl sha_ni
bogomips\t: 4000.00

";

/// A two-socket server: 2 x 2 cores x 2 threads, one CPU offline.
fn cpus(root: &Path) {
    let mut cpuinfo = String::new();
    for n in 0..8 {
        let (pkg, core) = (n / 4, (n % 4) / 2);
        cpuinfo += &CPU_BLOCK
            .replace("{n}", &n.to_string())
            .replace("{pkg}", &pkg.to_string())
            .replace("{core}", &core.to_string());
        file(
            root,
            &format!("/sys/devices/system/cpu/cpu{n}/topology/physical_package_id"),
            format!("{pkg}\n"),
        );
        file(
            root,
            &format!("/sys/devices/system/cpu/cpu{n}/topology/core_id"),
            format!("{core}\n"),
        );
    }
    dir(root, "/sys/devices/system/cpu/cpu8"); // offline: no topology
    dir(root, "/sys/devices/system/cpu/cpufreq");
    file(root, "/sys/devices/system/cpu/online", "0-7\n");
    file(root, "/proc/cpuinfo", cpuinfo);
}

fn disks(root: &Path) {
    // SATA disk on an AHCI controller, with a udev by-path link.
    let sda = "/sys/devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0";
    file(root, &format!("{sda}/block/sda/size"), "7814037168\n");
    file(root, &format!("{sda}/block/sda/queue/rotational"), "1\n");
    file(root, &format!("{sda}/block/sda/removable"), "0\n");
    file(root, &format!("{sda}/block/sda/ro"), "0\n");
    link(root, &format!("{sda}/block/sda/device"), "../../../2:0:0:0");
    file(root, &format!("{sda}/model"), "ST4000NM0035-1V4\n");
    file(root, &format!("{sda}/wwid"), "naa.5000c500a1b2c3d4\n");
    let mut pg80 = vec![0x00, 0x80, 0x00, 0x14];
    pg80.extend_from_slice(b"            ZC1A2B3C");
    file(root, &format!("{sda}/vpd_pg80"), pg80);
    dir(root, &format!("{sda}/block/sda/sda1"));
    link(
        root,
        "/sys/block/sda",
        &format!("..{}/block/sda", &sda["/sys".len()..]),
    );
    link(
        root,
        "/dev/disk/by-path/pci-0000:00:1f.2-ata-3",
        "../../sda",
    );
    link(
        root,
        "/dev/disk/by-path/pci-0000:00:1f.2-ata-3.0",
        "../../sda",
    );
    link(
        root,
        "/dev/disk/by-path/pci-0000:00:1f.2-ata-3-part1",
        "../../sda1",
    );

    // NVMe namespace; model and serial live on the controller.
    let ctrl = "/sys/devices/pci0000:00/0000:00:03.0/0000:01:00.0/nvme/nvme0";
    file(
        root,
        &format!("{ctrl}/model"),
        "SAMSUNG MZQL21T9HCJR-00A07               \n",
    );
    file(root, &format!("{ctrl}/serial"), "S64GNE0R123456      \n");
    file(root, &format!("{ctrl}/nvme0n1/size"), "3750748848\n");
    file(
        root,
        &format!("{ctrl}/nvme0n1/wwid"),
        "eui.36344730526054940025384500000001\n",
    );
    file(root, &format!("{ctrl}/nvme0n1/nsid"), "1\n");
    file(root, &format!("{ctrl}/nvme0n1/queue/rotational"), "0\n");
    link(root, &format!("{ctrl}/nvme0n1/device"), "../../nvme0");
    link(
        root,
        "/sys/block/nvme0n1",
        "../devices/pci0000:00/0000:00:03.0/0000:01:00.0/nvme/nvme0/nvme0n1",
    );

    // virtio-blk: the serial is an attribute of the disk itself.
    let vda = "/sys/devices/pci0000:00/0000:00:05.0/virtio2/block/vda";
    file(root, &format!("{vda}/size"), "20971520\n");
    file(root, &format!("{vda}/serial"), "VDA-SERIAL-1\n");
    file(root, &format!("{vda}/queue/rotational"), "1\n");
    link(root, &format!("{vda}/device"), "../../../virtio2");
    link(
        root,
        "/sys/block/vda",
        "../devices/pci0000:00/0000:00:05.0/virtio2/block/vda",
    );

    // USB stick, removable.
    let usb = "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0";
    file(root, &format!("{usb}/block/sdb/size"), "60062500\n");
    file(root, &format!("{usb}/block/sdb/removable"), "1\n");
    file(root, &format!("{usb}/model"), "Ultra Fit       \n");
    link(root, &format!("{usb}/block/sdb/device"), "../../../6:0:0:0");
    link(
        root,
        "/sys/block/sdb",
        "../devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb",
    );

    // SAS disk behind an HBA.
    let sas = "/sys/devices/pci0000:00/0000:00:01.0/0000:02:00.0/host0/port-0:0/end_device-0:0/target0:0:0/0:0:0:0";
    file(root, &format!("{sas}/block/sdc/size"), "1000000\n");
    file(root, &format!("{sas}/sas_address"), "0x5000c500a1b2c3d5\n");
    link(root, &format!("{sas}/block/sdc/device"), "../../../0:0:0:0");
    link(
        root,
        "/sys/block/sdc",
        "../devices/pci0000:00/0000:00:01.0/0000:02:00.0/host0/port-0:0/end_device-0:0/target0:0:0/0:0:0:0/block/sdc",
    );

    // Virtual devices and an optical drive are not disks.
    file(root, "/sys/devices/virtual/block/loop0/size", "0\n");
    link(root, "/sys/block/loop0", "../devices/virtual/block/loop0");
    file(
        root,
        "/sys/devices/pci0000:00/0000:00:1f.2/ata4/host3/target3:0:0/3:0:0:0/block/sr0/size",
        "2097152\n",
    );
    link(
        root,
        "/sys/block/sr0",
        "../devices/pci0000:00/0000:00:1f.2/ata4/host3/target3:0:0/3:0:0:0/block/sr0",
    );
}

fn nics(root: &Path) {
    let eno1 = "/sys/devices/pci0000:00/0000:00:1c.0/0000:3b:00.0";
    file(
        root,
        &format!("{eno1}/net/eno1/address"),
        "3C:FD:FE:A1:B2:C3\n",
    );
    file(root, &format!("{eno1}/net/eno1/operstate"), "up\n");
    file(root, &format!("{eno1}/net/eno1/carrier"), "1\n");
    file(root, &format!("{eno1}/net/eno1/speed"), "10000\n");
    file(root, &format!("{eno1}/net/eno1/mtu"), "9000\n");
    link(
        root,
        &format!("{eno1}/net/eno1/device"),
        "../../../0000:3b:00.0",
    );
    link(
        root,
        &format!("{eno1}/driver"),
        "../../../../bus/pci/drivers/ixgbe",
    );
    link(
        root,
        "/sys/class/net/eno1",
        "../../devices/pci0000:00/0000:00:1c.0/0000:3b:00.0/net/eno1",
    );

    // virtio NIC, administratively down: no carrier, speed -1.
    let virtio = "/sys/devices/pci0000:00/0000:00:04.0/virtio1";
    file(
        root,
        &format!("{virtio}/net/ens4/address"),
        "52:54:00:12:34:56\n",
    );
    file(root, &format!("{virtio}/net/ens4/operstate"), "down\n");
    file(root, &format!("{virtio}/net/ens4/speed"), "-1\n");
    file(root, &format!("{virtio}/net/ens4/mtu"), "1500\n");
    link(
        root,
        &format!("{virtio}/net/ens4/device"),
        "../../../virtio1",
    );
    link(
        root,
        &format!("{virtio}/driver"),
        "../../../../bus/virtio/drivers/virtio_net",
    );
    link(
        root,
        "/sys/class/net/ens4",
        "../../devices/pci0000:00/0000:00:04.0/virtio1/net/ens4",
    );

    // Loopback and a bridge have no device.
    file(
        root,
        "/sys/devices/virtual/net/lo/address",
        "00:00:00:00:00:00\n",
    );
    link(root, "/sys/class/net/lo", "../../devices/virtual/net/lo");
    file(
        root,
        "/sys/devices/virtual/net/br0/address",
        "02:00:00:00:00:01\n",
    );
    link(root, "/sys/class/net/br0", "../../devices/virtual/net/br0");
}

fn dmi(root: &Path) {
    let id = "/sys/class/dmi/id";
    file(root, &format!("{id}/sys_vendor"), "Dell Inc.\n");
    file(root, &format!("{id}/product_name"), "PowerEdge R650\n");
    file(
        root,
        &format!("{id}/product_uuid"),
        "4C4C4544-0038-3010-8050-B4C04F4E3732\n",
    );
    file(
        root,
        &format!("{id}/board_serial"),
        "To Be Filled By O.E.M.\n",
    );
    file(root, &format!("{id}/chassis_type"), "23\n");
    file(root, &format!("{id}/bios_version"), "1.8.2\n");
    // product_serial, bios_vendor... missing: taken from the SMBIOS table.
    file(root, "/sys/firmware/dmi/tables/DMI", QEMU_DMI_TABLE);
}

fn full_tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    cpus(root);
    file(
        root,
        "/proc/meminfo",
        "MemTotal:       65689468 kB\nMemFree:        60000000 kB\n",
    );
    disks(root);
    nics(root);
    dmi(root);
    file(
        root,
        "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c",
        [0x06, 0, 0, 0, 1],
    );
    t
}

#[test]
fn collects_a_server_shaped_tree() {
    let tree = full_tree();
    let facts = collect_with(tree.path(), false).unwrap();
    facts.validate().unwrap();
    assert_eq!(facts.problems, Vec::<String>::new());

    let cpu = &facts.cpu;
    assert_eq!(
        cpu.model.as_deref(),
        Some("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz")
    );
    assert_eq!(cpu.vendor.as_deref(), Some("GenuineIntel"));
    assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (2, 4, 8));
    assert_eq!(cpu.mhz, Some(2000));
    for f in ["vmx", "aes", "avx2", "avx512f", "sse4_2", "sha_ni", "lm"] {
        assert!(
            cpu.flags.iter().any(|x| x == f),
            "flag {f} in {:?}",
            cpu.flags
        );
    }
    assert!(!cpu.flags.iter().any(|x| x == "fpu" || x == "tsc"));

    assert_eq!(facts.memory.total_bytes, 65689468 * 1024);
    assert_eq!(facts.memory.dimms.len(), 1);
    assert_eq!(facts.memory.dimms[0].serial.as_deref(), Some("DIMM-SN-1"));

    let names: Vec<&str> = facts.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["nvme0n1", "sda", "sdb", "sdc", "vda"]);
    let disk = |n: &str| facts.disks.iter().find(|d| d.name == n).unwrap();

    let sda = disk("sda");
    assert_eq!(sda.transport, DiskTransport::Sata);
    assert_eq!(sda.model.as_deref(), Some("ST4000NM0035-1V4"));
    assert_eq!(sda.serial.as_deref(), Some("ZC1A2B3C"));
    assert_eq!(sda.wwn.as_deref(), Some("naa.5000c500a1b2c3d4"));
    assert_eq!(sda.size_bytes, 7814037168 * 512);
    assert!(sda.rotational);
    assert_eq!(sda.by_path.as_deref(), Some("pci-0000:00:1f.2-ata-3"));

    let nvme = disk("nvme0n1");
    assert_eq!(nvme.transport, DiskTransport::Nvme);
    assert_eq!(nvme.model.as_deref(), Some("SAMSUNG MZQL21T9HCJR-00A07"));
    assert_eq!(nvme.serial.as_deref(), Some("S64GNE0R123456"));
    assert_eq!(
        nvme.wwn.as_deref(),
        Some("eui.36344730526054940025384500000001")
    );
    assert!(!nvme.rotational);
    // No udev link for it: computed like udev's path_id.
    assert_eq!(nvme.by_path.as_deref(), Some("pci-0000:01:00.0-nvme-1"));

    let vda = disk("vda");
    assert_eq!(vda.transport, DiskTransport::Virtio);
    assert_eq!(vda.serial.as_deref(), Some("VDA-SERIAL-1"));
    assert_eq!(vda.size_bytes, 10 << 30);
    assert_eq!(vda.by_path.as_deref(), Some("pci-0000:00:05.0"));

    let sdb = disk("sdb");
    assert_eq!(sdb.transport, DiskTransport::Usb);
    assert!(sdb.removable);
    assert_eq!(sdb.model.as_deref(), Some("Ultra Fit"));

    let sdc = disk("sdc");
    assert_eq!(sdc.transport, DiskTransport::Sas);
    assert_eq!(
        sdc.by_path.as_deref(),
        Some("pci-0000:02:00.0-sas-0x5000c500a1b2c3d5-lun-0")
    );

    assert_eq!(facts.nics.len(), 2);
    let eno1 = &facts.nics[0];
    assert_eq!(eno1.name, "eno1");
    assert_eq!(eno1.mac, "3c:fd:fe:a1:b2:c3");
    assert_eq!(eno1.driver.as_deref(), Some("ixgbe"));
    assert_eq!(eno1.link_up, Some(true));
    assert_eq!(eno1.speed_mbps, Some(10000));
    assert_eq!(eno1.pci_address.as_deref(), Some("0000:3b:00.0"));
    assert_eq!(eno1.mtu, Some(9000));
    assert_eq!(eno1.firmware_version, None); // not live
    let ens4 = &facts.nics[1];
    assert_eq!(ens4.name, "ens4");
    assert_eq!(ens4.driver.as_deref(), Some("virtio_net"));
    assert_eq!(ens4.link_up, None); // down: the kernel cannot tell
    assert_eq!(ens4.speed_mbps, None);
    assert_eq!(ens4.pci_address.as_deref(), Some("0000:00:04.0"));

    // sysfs first, the SMBIOS table for what sysfs lacks, placeholders dropped.
    let dmi = &facts.dmi;
    assert_eq!(dmi.system_vendor.as_deref(), Some("Dell Inc."));
    assert_eq!(dmi.system_product.as_deref(), Some("PowerEdge R650"));
    assert_eq!(
        dmi.system_uuid.as_deref(),
        Some("4c4c4544-0038-3010-8050-b4c04f4e3732")
    );
    assert_eq!(dmi.system_serial.as_deref(), Some("SYS-SERIAL-0042"));
    assert_eq!(dmi.board_serial.as_deref(), Some("BOARD-SN-9"));
    assert_eq!(dmi.bios_vendor.as_deref(), Some("AnvilBIOS"));
    assert_eq!(dmi.bios_version.as_deref(), Some("1.8.2"));
    assert_eq!(dmi.chassis_type.as_deref(), Some("Rack Mount Chassis"));

    assert_eq!(facts.boot.mode, BootMode::Uefi);
    assert_eq!(facts.boot.secure_boot, Some(true));
    assert!(facts.lldp.is_empty());
    assert_eq!(physical_interfaces(tree.path()), ["eno1", "ens4"]);
}

#[test]
fn an_empty_tree_gives_empty_facts_without_problems() {
    let t = tempfile::tempdir().unwrap();
    let facts = collect(t.path()).unwrap();
    facts.validate().unwrap();
    assert_eq!(facts.cpu.threads, 0);
    assert_eq!(facts.memory.total_bytes, 0);
    assert!(facts.disks.is_empty() && facts.nics.is_empty());
    assert_eq!(facts.dmi, Default::default());
    assert_eq!(facts.boot.mode, BootMode::Bios);
    assert_eq!(facts.boot.secure_boot, None);
    assert!(facts.problems.is_empty(), "{:?}", facts.problems);
    assert!(physical_interfaces(t.path()).is_empty());
}

#[test]
fn partial_and_broken_data_is_reported_softly() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    // cpuinfo without topology (no sysfs cpu dirs, no physical id): one socket.
    file(
        root,
        "/proc/cpuinfo",
        "processor\t: 0\nmodel name\t: QEMU Virtual CPU version 2.5+\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU version 2.5+\n\n",
    );
    // A disk whose size file is garbage and whose other files are missing.
    let vda = "/sys/devices/pci0000:00/0000:00:05.0/virtio2/block/vda";
    file(root, &format!("{vda}/size"), "lots\n");
    link(
        root,
        "/sys/block/vda",
        "../devices/pci0000:00/0000:00:05.0/virtio2/block/vda",
    );
    // A NIC without address is skipped; one with an unparsable mtu is kept.
    file(
        root,
        "/sys/devices/pci0000:00/0000:00:04.0/net/eth0/mtu",
        "big\n",
    );
    file(
        root,
        "/sys/devices/pci0000:00/0000:00:04.0/net/eth0/address",
        "52:54:00:aa:bb:cc\n",
    );
    link(
        root,
        "/sys/devices/pci0000:00/0000:00:04.0/net/eth0/device",
        "../../../0000:00:04.0",
    );
    link(
        root,
        "/sys/class/net/eth0",
        "../../devices/pci0000:00/0000:00:04.0/net/eth0",
    );
    dir(root, "/sys/devices/pci0000:00/0000:00:06.0/net/eth1");
    link(
        root,
        "/sys/devices/pci0000:00/0000:00:06.0/net/eth1/device",
        "../../../0000:00:06.0",
    );
    link(
        root,
        "/sys/class/net/eth1",
        "../../devices/pci0000:00/0000:00:06.0/net/eth1",
    );
    // A dangling link (device removed while we look).
    link(root, "/sys/block/sdz", "../devices/gone/block/sdz");
    // EFI without efivarfs mounted: Secure Boot unknown.
    dir(root, "/sys/firmware/efi/efivars");
    // A truncated SMBIOS table.
    // (cut inside the second structure: the BIOS one is whole).
    file(root, "/sys/firmware/dmi/tables/DMI", &QEMU_DMI_TABLE[..60]);

    let facts = collect(root).unwrap();
    facts.validate().unwrap();
    assert_eq!(
        (facts.cpu.sockets, facts.cpu.cores, facts.cpu.threads),
        (1, 2, 2)
    );
    assert_eq!(facts.disks.len(), 1);
    assert_eq!(facts.disks[0].size_bytes, 0);
    assert_eq!(facts.disks[0].transport, DiskTransport::Virtio);
    assert_eq!(facts.nics.len(), 1);
    assert_eq!(facts.nics[0].mtu, None);
    assert_eq!(facts.boot.mode, BootMode::Uefi);
    assert_eq!(facts.boot.secure_boot, None);
    assert_eq!(facts.dmi.bios_vendor.as_deref(), Some("AnvilBIOS"));
    assert_eq!(facts.dmi.system_vendor, None);
    assert_eq!(
        facts.problems,
        vec![
            "/sys/block/vda/size: not a number: \"lots\"".to_string(),
            "/sys/class/net/eth0/mtu: not a number: \"big\"".to_string(),
        ]
    );
}

#[test]
fn a_root_that_is_not_a_directory_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("nope");
    assert!(matches!(collect(&missing), Err(Error::BadRoot { .. })));
}

/// The real machine running the tests: whatever it has must collect,
/// validate and make sense.
#[test]
fn collects_this_machine() {
    let facts = collect(Path::new("/")).unwrap();
    facts.validate().unwrap();
    assert!(facts.cpu.threads > 0, "{:?}", facts.cpu);
    assert!(facts.cpu.sockets > 0 && facts.cpu.cores > 0);
    assert!(facts.cpu.cores <= facts.cpu.threads);
    assert!(facts.memory.total_bytes > 64 << 20);
    let json = serde_json::to_string(&facts).unwrap();
    let back: anvil_inventory::HardwareFacts = serde_json::from_str(&json).unwrap();
    assert_eq!(back, facts);
    eprintln!("{}", serde_json::to_string_pretty(&facts).unwrap());
}
