//! The deployment test disk images (`scripts/test-image/build.sh`,
//! docs/test-image.md) boot by themselves: each one is started in QEMU
//! (TCG, no network) from its own disk, BIOS with SeaBIOS and UEFI with
//! OVMF, on virtio, AHCI and NVMe disks, as raw and as qcow2, and must print
//! its `ANVIL-DEPLOYED` lines and power the VM off:
//! - as built: `no-cidata`, and the root partition as built;
//! - after what a deployment does (a larger disk, the root partition and its
//!   ext4 grown, a `CIDATA` partition at the end of the disk): the hostname,
//!   the SSH keys, the hashes of the user data and network config, and the
//!   grown sizes;
//! - with an OpenStack config drive (`config-2`) instead.
//!
//! Builds the images once (cached by the script's stamp) in
//! `$ANVIL_TEST_IMAGE_DIR` or `target/test-image`. Needs
//! `qemu-system-x86 qemu-utils ovmf mtools fdisk e2fsprogs` (the build
//! installs its own tools); `ANVIL_SKIP_VM_TESTS=1` skips the VM tests.
//! Timings go to stdout.

#[path = "e2e/test_image.rs"]
mod test_image;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};
use test_image::{CloudData, Table, markers, run, test_image_dir};

/// QEMU start to power-off may take this long in TCG with another VM beside.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// VMs running at once (each TCG guest keeps one core busy).
const MAX_PARALLEL_VMS: usize = 2;
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

const HOSTNAME: &str = "test-node-1";
const KEY_1: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ3DYxQ2Pw0nL9vIaGqKvOk8sH0cCwZ0y7ZQeE5vQ2e test@key";
const KEY_2: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDx second@key";
const USER_DATA: &str = "#cloud-config\nruncmd:\n  - echo deployed\n";
const NETWORK_CONFIG: &str = "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"52:54:00:12:34:56\"\n    dhcp4: true\n";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Firmware {
    Bios,
    Uefi,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Bus {
    Virtio,
    Ahci,
    Nvme,
}

impl Bus {
    /// The root partition's device name inside the VM.
    fn root_device(self) -> &'static str {
        match self {
            Bus::Virtio => "/dev/vda2",
            Bus::Ahci => "/dev/sda2",
            Bus::Nvme => "/dev/nvme0n1p2",
        }
    }
    fn partition(self, n: u32) -> String {
        let root = self.root_device();
        format!("{}{n}", &root[..root.len() - 1])
    }
}

fn vm_tests_enabled() -> bool {
    if std::env::var("ANVIL_SKIP_VM_TESTS").as_deref() == Ok("1") {
        eprintln!("ANVIL_SKIP_VM_TESTS=1: skipping the test-image VM test");
        return false;
    }
    true
}

/// Slots for VMs running at once.
static VM_SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

struct VmSlot;

impl VmSlot {
    fn take() -> VmSlot {
        let (m, cv) = &VM_SLOTS;
        let mut n = m.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= MAX_PARALLEL_VMS {
            n = cv.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        VmSlot
    }
}

impl Drop for VmSlot {
    fn drop(&mut self) {
        let (m, cv) = &VM_SLOTS;
        *m.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        cv.notify_one();
    }
}

/// The QEMU this test started; killed by its PID (through the handle) if
/// the test ends before it did.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A scratch directory under target/ (removed at the end).
fn scratch(name: &str) -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp");
    std::fs::create_dir_all(&base).expect("mkdir target/tmp");
    tempfile::Builder::new()
        .prefix(&format!("test-image-{name}-"))
        .tempdir_in(base)
        .expect("tempdir")
}

struct Boot {
    markers: Vec<String>,
    to_poweroff: Duration,
}

/// Boots `disk` in QEMU (TCG, 256 MiB, no network, serial console to a
/// file) and waits until the guest powers the VM off; panics with the
/// serial log if it does not within [`BOOT_TIMEOUT`] or QEMU fails.
fn boot(dir: &Path, name: &str, firmware: Firmware, bus: Bus, disk: &Path, format: &str) -> Boot {
    let _slot = VmSlot::take();
    let serial = dir.join(format!("{name}.serial"));
    let qemu_log = dir.join(format!("{name}.qemu.log"));
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-accel", "tcg", "-m", "256", "-smp", "1"])
        .args(["-nographic", "-nodefaults", "-monitor", "none"])
        .args(["-no-reboot", "-nic", "none"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg(format!(
            "file={},format={format},if=none,id=disk0",
            disk.display()
        ));
    match bus {
        Bus::Virtio => cmd.args(["-device", "virtio-blk-pci,drive=disk0,bootindex=1"]),
        Bus::Ahci => cmd.args(["-device", "ide-hd,drive=disk0,bus=ide.0,bootindex=1"]),
        Bus::Nvme => cmd.args([
            "-device",
            "nvme,drive=disk0,serial=anvil-test-disk,bootindex=1",
        ]),
    };
    if firmware == Firmware::Uefi {
        let vars = dir.join(format!("{name}.OVMF_VARS.fd"));
        std::fs::copy(OVMF_VARS, &vars)
            .unwrap_or_else(|e| panic!("copy {OVMF_VARS} (Debian package ovmf): {e}"));
        cmd.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
    }
    let log = std::fs::File::create(&qemu_log).expect("qemu log");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log);
    let started = Instant::now();
    let mut qemu = Qemu(cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot start qemu-system-x86_64 (Debian package qemu-system-x86): {e}")
    }));
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let status = loop {
        if let Some(st) = qemu.0.try_wait().expect("try_wait") {
            break st;
        }
        if started.elapsed() > BOOT_TIMEOUT {
            panic!(
                "{name}: the VM did not power off within {} s\n===== serial =====\n{}",
                BOOT_TIMEOUT.as_secs(),
                read(&serial)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let to_poweroff = started.elapsed();
    let log = read(&serial);
    assert!(
        status.success(),
        "{name}: QEMU exited with {status}\n===== qemu =====\n{}\n===== serial =====\n{log}",
        read(&qemu_log)
    );
    println!(
        "test-image timing: {name} firmware={firmware:?} bus={bus:?} format={format} qemu_start_to_poweroff={:.1}s",
        to_poweroff.as_secs_f64()
    );
    let markers = markers(&log);
    // Powered off by the image's init, not by a kernel panic (panic=10 with
    // -no-reboot also ends QEMU).
    assert_eq!(
        markers.last().map(String::as_str),
        Some("done"),
        "{name}: the image's init did not finish\n===== serial =====\n{log}"
    );
    assert!(
        log.contains("reboot: Power down"),
        "{name}: the VM ended without a power-off\n===== serial =====\n{log}"
    );
    Boot {
        markers,
        to_poweroff,
    }
}

fn image(file: &str) -> PathBuf {
    test_image_dir().join(file)
}

fn root_line(bus: Bus, bytes: u64) -> String {
    format!(
        "root={} partition-bytes={bytes} fs-bytes={bytes}",
        bus.root_device()
    )
}

/// Boots an image file as built (read-only use: QEMU gets a copy).
fn boots_as_built(name: &str, file: &str, format: &str, firmware: Firmware, bus: Bus) {
    if !vm_tests_enabled() {
        return;
    }
    let dir = scratch(name);
    let disk = dir.path().join(file);
    test_image::copy_disk(&image(file), &disk);
    let b = boot(dir.path(), name, firmware, bus, &disk, format);
    let boot_line = match firmware {
        Firmware::Bios => "boot=bios",
        Firmware::Uefi => "boot=uefi",
    };
    assert_eq!(
        b.markers,
        [
            boot_line.to_string(),
            root_line(bus, test_image::ROOT_SECTORS * 512),
            "no-cidata".into(),
            "done".into(),
        ],
        "{name}"
    );
    let _ = b.to_poweroff;
}

#[test]
fn bios_qcow2_on_virtio_boots_and_reports_no_cidata() {
    boots_as_built(
        "bios-qcow2-virtio",
        "bios.qcow2",
        "qcow2",
        Firmware::Bios,
        Bus::Virtio,
    );
}

#[test]
fn uefi_compressed_qcow2_on_nvme_boots_and_reports_no_cidata() {
    boots_as_built(
        "uefi-zqcow2-nvme",
        "uefi-compressed.qcow2",
        "qcow2",
        Firmware::Uefi,
        Bus::Nvme,
    );
}

/// A copy of the raw image treated like a deployment treats its disk, then
/// booted: the hostname, keys and user data hash from `CIDATA`, and the
/// grown root.
/// How `meta-data` is written: YAML as people write it, or pretty-printed
/// JSON as `anvil-cloudinit` renders it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum MetaStyle {
    Yaml,
    PrettyJson,
}

fn deployed_nocloud(
    name: &str,
    file: &str,
    table: Table,
    firmware: Firmware,
    bus: Bus,
    style: MetaStyle,
) {
    if !vm_tests_enabled() {
        return;
    }
    let dir = scratch(name);
    let disk = dir.path().join(file);
    test_image::copy_disk(&image(file), &disk);
    let meta_data = match style {
        MetaStyle::Yaml => format!(
            "instance-id: anvil-{name}\nlocal-hostname: {HOSTNAME}\npublic-keys:\n  - {KEY_1}\n  - \"{KEY_2}\"\n"
        ),
        MetaStyle::PrettyJson => {
            serde_json::to_string_pretty(&serde_json::json!({
                "instance-id": format!("anvil-{name}"),
                "local-hostname": HOSTNAME,
                "public-keys": [KEY_1, KEY_2],
            }))
            .expect("json")
                + "\n"
        }
    };
    let root_bytes = test_image::deploy_like(
        &disk,
        table,
        128 << 20,
        &CloudData::NoCloud {
            meta_data: &meta_data,
            user_data: Some(USER_DATA),
            network_config: Some(NETWORK_CONFIG),
        },
    );
    assert!(root_bytes > test_image::ROOT_SECTORS * 512 * 10);
    let b = boot(dir.path(), name, firmware, bus, &disk, "raw");
    assert_eq!(
        b.markers,
        [
            if firmware == Firmware::Bios {
                "boot=bios"
            } else {
                "boot=uefi"
            }
            .to_string(),
            root_line(bus, root_bytes),
            format!("source=nocloud dev={} fs=vfat", bus.partition(3)),
            format!("instance-id=anvil-{name}"),
            format!("hostname={HOSTNAME}"),
            format!("ssh-key={KEY_1}"),
            format!("ssh-key={KEY_2}"),
            format!("user-data-sha256={}", test_image::sha256_hex(USER_DATA)),
            format!(
                "network-config-sha256={}",
                test_image::sha256_hex(NETWORK_CONFIG)
            ),
            "done".into(),
        ],
        "{name}"
    );
}

#[test]
fn bios_raw_deployed_with_cidata_on_ahci_prints_hostname_and_keys() {
    deployed_nocloud(
        "bios-cidata-ahci",
        "bios.raw",
        Table::Mbr,
        Firmware::Bios,
        Bus::Ahci,
        MetaStyle::Yaml,
    );
}

#[test]
fn uefi_raw_deployed_with_cidata_on_virtio_prints_hostname_and_keys() {
    deployed_nocloud(
        "uefi-cidata-virtio",
        "uefi.raw",
        Table::Gpt,
        Firmware::Uefi,
        Bus::Virtio,
        MetaStyle::PrettyJson,
    );
}

#[test]
fn bios_raw_with_a_config_drive_prints_hostname_and_keys() {
    if !vm_tests_enabled() {
        return;
    }
    let name = "bios-config2-virtio";
    let dir = scratch(name);
    let disk = dir.path().join("bios.raw");
    test_image::copy_disk(&image("bios.raw"), &disk);
    // As anvil-cloudinit renders it: pretty-printed, keys both as a
    // name -> key map and as a list of objects (a trailing newline in a key,
    // as OpenStack writes them, is dropped).
    let meta = serde_json::to_string_pretty(&serde_json::json!({
        "uuid": "0b5e6f6a-2f3c-4a51-9d1e-5f2b3c4d5e6f",
        "hostname": HOSTNAME,
        "name": HOSTNAME,
        "launch_index": 0,
        "public_keys": {"key-0": format!("{KEY_1}\n"), "key-1": KEY_2},
        "keys": [
            {"name": "key-0", "type": "ssh", "data": KEY_1},
            {"name": "key-1", "type": "ssh", "data": KEY_2},
        ],
    }))
    .expect("json");
    let root_bytes = test_image::deploy_like(
        &disk,
        Table::Mbr,
        test_image::DISK_BYTES,
        &CloudData::ConfigDrive {
            meta_data_json: &meta,
        },
    );
    let b = boot(dir.path(), name, Firmware::Bios, Bus::Virtio, &disk, "raw");
    assert_eq!(
        b.markers,
        [
            "boot=bios".to_string(),
            root_line(Bus::Virtio, root_bytes),
            "source=config-2 dev=/dev/vda3 fs=vfat".into(),
            "instance-id=0b5e6f6a-2f3c-4a51-9d1e-5f2b3c4d5e6f".into(),
            format!("hostname={HOSTNAME}"),
            format!("ssh-key={KEY_1}"),
            format!("ssh-key={KEY_2}"),
            "done".into(),
        ]
    );
}

/// Without a VM: the files are what SHA256SUMS says, every qcow2 holds the
/// same disk as its raw image, and the partition tables are the documented
/// layout with the rest of the disk free.
#[test]
fn images_match_their_checksums_layout_and_qcow2_twins() {
    let dir = test_image_dir();
    run(Command::new("sha256sum")
        .args(["--check", "--quiet", "SHA256SUMS"])
        .current_dir(&dir));
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).expect("SHA256SUMS");
    for f in test_image::IMAGE_FILES {
        assert!(
            sums.contains(&format!("  {f}\n")),
            "{f} not in SHA256SUMS:\n{sums}"
        );
    }
    for fw in ["bios", "uefi"] {
        let raw = dir.join(format!("{fw}.raw"));
        assert_eq!(
            std::fs::metadata(&raw).expect("raw").len(),
            test_image::DISK_BYTES
        );
        for q in [format!("{fw}.qcow2"), format!("{fw}-compressed.qcow2")] {
            // Exit 0: identical contents.
            run(Command::new("qemu-img")
                .args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
                .arg(&raw)
                .arg(dir.join(&q)));
        }
        let json: serde_json::Value =
            serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(&raw)))
                .expect("sfdisk --json");
        let t = &json["partitiontable"];
        let parts = t["partitions"].as_array().expect("partitions");
        assert_eq!(parts.len(), 2, "{t:#}");
        assert_eq!(parts[0]["start"], test_image::BOOT_START, "{t:#}");
        assert_eq!(parts[0]["size"], test_image::BOOT_SECTORS, "{t:#}");
        assert_eq!(parts[1]["start"], test_image::ROOT_START, "{t:#}");
        assert_eq!(parts[1]["size"], test_image::ROOT_SECTORS, "{t:#}");
        let root_end_bytes = (test_image::ROOT_START + test_image::ROOT_SECTORS) * 512;
        assert!(
            test_image::DISK_BYTES - root_end_bytes >= 32 << 20,
            "less than 32 MiB left free after the root partition"
        );
        match fw {
            "bios" => {
                assert_eq!(t["label"], "dos", "{t:#}");
                assert_eq!(parts[0]["bootable"], true, "{t:#}");
                assert_eq!(parts[0]["type"], "e", "{t:#}");
                assert_eq!(parts[1]["type"], "83", "{t:#}");
            }
            _ => {
                assert_eq!(t["label"], "gpt", "{t:#}");
                assert_eq!(
                    parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                    "{t:#}"
                );
                assert_eq!(
                    parts[1]["type"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
                    "{t:#}"
                );
            }
        }
        // The boot files, read with mtools from the image (no mount; -a:
        // syslinux's ldlinux.sys is hidden).
        let offset = format!("{}@@{}", raw.display(), test_image::BOOT_START * 512);
        let listing = run(Command::new("mdir").args(["-/", "-b", "-a", "-i", &offset, "::"]));
        let want: &[&str] = match fw {
            "bios" => &[
                "::/vmlinuz",
                "::/initrd.img",
                "::/syslinux.cfg",
                "::/ldlinux.sys",
            ],
            _ => &[
                "::/vmlinuz",
                "::/initrd.img",
                "::/EFI/BOOT/BOOTX64.EFI",
                "::/loader/loader.conf",
                "::/loader/entries/anvil.conf",
            ],
        };
        for w in want {
            assert!(
                listing.lines().any(|l| l.eq_ignore_ascii_case(w)),
                "{fw}: {w} missing from the boot partition:\n{listing}"
            );
        }
    }
}

/// A larger image made with `sized_image` (for deployment benchmarks) still
/// boots, with its root grown to the image's end and holding the payload.
#[test]
fn sized_uefi_image_with_a_payload_boots() {
    if !vm_tests_enabled() {
        return;
    }
    let name = "uefi-sized-virtio";
    let dir = scratch(name);
    let disk = dir.path().join("uefi-192m.raw");
    let root_bytes =
        test_image::sized_image(&image("uefi.raw"), Table::Gpt, &disk, 192 << 20, 128 << 20);
    // Data, not zeros: a compressor gets nowhere with the payload.
    let allocated = std::fs::metadata(&disk).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    });
    assert!(
        allocated.expect("metadata") > 128 << 20,
        "the payload is not on the disk"
    );
    let b = boot(dir.path(), name, Firmware::Uefi, Bus::Virtio, &disk, "raw");
    assert_eq!(
        b.markers,
        [
            "boot=uefi".to_string(),
            root_line(Bus::Virtio, root_bytes),
            "no-cidata".into(),
            "done".into(),
        ]
    );
}
