//! End to end, software RAID 1 at deploy, BIOS and UEFI: a QEMU machine
//! (TCG) behind an `ipmi_sim` BMC with two 512 MiB disks (virtio-blk and
//! NVMe, pre-filled with different "previous tenant" data) is commissioned,
//! then deployed with `"raid": {"level": 1}` and the test disk image
//! through Anvil's own network boot, power driver and agent (`mdadm` in the
//! ramdisk). It boots its disk and prints the hostname and SSH key it reads
//! from `CIDATA`. Then, with the VM off, on the host: both disk files carry
//! the same md array (`mdadm --examine`: metadata 1.0, raid1, clean, the
//! same array UUID and events, both active, data from sector 0) and the
//! same bytes over the array's data area, also where they held different
//! data (the resync ran); the VM started with the SECOND disk alone boots
//! and prints the hostname again (metadata 1.0: each member is a plain disk
//! to the firmware). Released (BIOS only), both disks' first and last MiB
//! are zeros and no md superblock is left.
//!
//! Needs what e2e_deploy.rs needs plus Debian's `mdadm` on the host
//! (scripts/test.sh installs it); `ANVIL_SKIP_VM_TESTS=1` skips it.
//! Timings go to stdout and target/e2e-boot/timings.txt.

#[path = "e2e/commission_lab.rs"]
mod commission_lab;
mod common;
mod e2e;
#[path = "e2e/test_image.rs"]
mod test_image;

use commission_lab::{BMC_PASSWORD, BMC_USER, IpmiVm, VmSpec, deploy_lab_toml};
use e2e::{Anvil, Lab};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PHASE_TIMEOUT: Duration = Duration::from_secs(420);
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGRlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn+AgYKD raid@anvil";
const MIB: usize = 1 << 20;

struct Rig {
    // Field order is drop order: the VM (QEMU killed) before the lab.
    vm: IpmiVm,
    anvil: Anvil,
    lab: Lab,
    id: String,
    hostname: String,
}

impl Rig {
    fn wait_state(&self, states: &[&str], within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let m = self.anvil.get(&format!("/machines/{}", self.id));
            if states.contains(&m["state"].as_str().unwrap_or("")) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "machine still {} after {} s (waiting for {states:?}){}",
                m["state"],
                within.as_secs(),
                self.context()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn action(&self, action: &str, body: Value) -> (u16, Value) {
        self.anvil.request(
            "POST",
            &format!("/machines/{}/actions/{action}", self.id),
            Some(body),
        )
    }

    fn runs(&self) -> Value {
        self.anvil
            .get(&format!("/machines/{}/commissioning-runs", self.id))
    }

    fn context(&self) -> String {
        format!(
            "\n===== runs =====\n{:#}\n===== BMC calls =====\n{:?}\n===== serial console =====\n{}\n===== logs ====={}",
            self.runs(),
            self.vm.calls(),
            e2e::printable(&self.vm.serial_log()),
            self.lab.log_tails()
        )
    }

    /// Waits for the test image's markers (ending with `done`) in the
    /// serial log after byte `from`.
    fn wait_markers(&self, from: usize) -> Vec<String> {
        let deadline = Instant::now() + PHASE_TIMEOUT;
        loop {
            let serial = self.vm.serial_log();
            // A power cycle through the BMC starts a new QEMU, whose
            // serial file starts afresh.
            let from = if serial.len() >= from { from } else { 0 };
            let markers = test_image::markers(serial.get(from..).unwrap_or(""));
            if markers.last().map(String::as_str) == Some("done") {
                return markers;
            }
            assert!(
                Instant::now() < deadline,
                "the disk did not boot and print its markers in {} s: {markers:?}{}",
                PHASE_TIMEOUT.as_secs(),
                self.context()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A VM disk as a raw file in `scratch` (QEMU must be off).
    fn raw(&self, qcow2: &str, scratch: &Path) -> PathBuf {
        let raw = scratch.join(qcow2.replace(".qcow2", ".raw"));
        let o = Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(self.vm.dir.join(qcow2))
            .arg(&raw)
            .output()
            .expect("qemu-img");
        assert!(o.status.success(), "qemu-img convert: {o:?}");
        raw
    }
}

/// `mdadm --examine FILE` as `key: value` pairs (trimmed).
fn examine(disk: &Path) -> Result<Vec<(String, String)>, String> {
    let o = Command::new("mdadm")
        .arg("--examine")
        .arg(disk)
        .output()
        .expect("mdadm (Debian mdadm; scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        return Err(format!("{}{}", text, String::from_utf8_lossy(&o.stderr)));
    }
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(" : "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

fn field<'a>(ex: &'a [(String, String)], key: &str) -> &'a str {
    ex.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("mdadm --examine has no {key:?}: {ex:#?}"))
}

/// `1046528 sectors (…)` → 1046528.
fn sectors(v: &str) -> u64 {
    v.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a sector count: {v:?}"))
}

fn step<'a>(run: &'a Value, kind: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["kind"] == kind))
        .unwrap_or_else(|| panic!("no {kind} step: {run:#}"))
}

fn record(line: &str) {
    e2e::append_timing("timings.txt", line);
}

fn secs(t: Instant) -> String {
    format!("{:.1}s", t.elapsed().as_secs_f64())
}

/// One VM of this file at a time (the two tests share the 2 cores of CI
/// with the other VM tests).
static ONE_VM: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn bios_raid1_deploy_boots_from_either_disk_and_release_erases_both() {
    raid1_deploy(false);
}

#[test]
fn uefi_raid1_deploy_boots_from_either_disk() {
    raid1_deploy(true);
}

fn raid1_deploy(uefi: bool) {
    if e2e::prerequisites(uefi).is_none() {
        return;
    }
    commission_lab::prerequisites();
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let (firmware, image_file) = if uefi {
        ("uefi", "uefi.qcow2")
    } else {
        ("bios", "bios.raw")
    };
    let started = Instant::now();
    let mut timings = Vec::new();
    let lab = Lab::new();
    let anvil = Anvil::start(&lab, &deploy_lab_toml(&lab, "e2e", 600, ""));
    commission_lab::install_ramdisk(&anvil.data_dir);
    let vm = IpmiVm::start(&lab, false);
    let spec = VmSpec {
        manufacturer: "Anvil Test Works".into(),
        product: "AT-2000 Mirror".into(),
        serial: format!("AT-RAID-{:04}", lab.n),
        uuid: format!("7c6f2e1c-3a4d-4a55-9a0b-0a0b0c0d{:04x}", lab.n % 0xffff),
        macs: [lab.mac(1), lab.mac(2)],
        // Two equal disks: the mirror's default choice.
        virtio_disk: (512, "VDISK-RAID".into()),
        nvme_disk: (512, "NVME-RAID".into()),
        uefi,
    };
    vm.configure(&spec);
    vm.allow_reboot();
    // A previous tenant's data, different on each disk, where the grown
    // root file system will be (past the 64 MiB image, before the last
    // MiB): the members can only end up identical there through md's
    // resync, not because both started as zeros.
    for (file, pattern) in [("virtio.qcow2", "0xa5"), ("nvme.qcow2", "0x5a")] {
        for offset in ["100M", "300M", "480M"] {
            let o = Command::new("qemu-io")
                .args(["-f", "qcow2", "-c"])
                .arg(format!("write -P {pattern} {offset} 4M"))
                .arg(vm.dir.join(file))
                .output()
                .expect("qemu-io (Debian qemu-utils)");
            assert!(o.status.success(), "qemu-io: {o:?}");
        }
    }
    let args_both = std::fs::read_to_string(vm.dir.join("vm.args")).unwrap();
    let hostname = format!("raid-{firmware}");
    let (st, m) = anvil.request(
        "POST",
        "/machines",
        Some(json!({
            "hostname": hostname,
            "interfaces": [
                {"mac": spec.macs[0], "pxe": true},
                {"mac": spec.macs[1], "pxe": false},
            ],
            "bmc": {"driver": "ipmi", "address": vm.bmc_ip, "port": 623,
                    "username": BMC_USER, "password": BMC_PASSWORD},
        })),
    );
    assert_eq!(st, 201, "create machine: {m:#}");
    let id = m["id"].as_str().expect("machine id").to_string();
    let rig = Rig {
        vm,
        anvil,
        lab,
        id,
        hostname,
    };

    // --- commission ------------------------------------------------------------
    let t = Instant::now();
    let (st, job) = rig.action("commission", json!({}));
    assert_eq!(st, 202, "{job:#}");
    let m = rig.wait_state(&["ready", "failed"], PHASE_TIMEOUT);
    assert_eq!(m["state"], "ready", "{m:#}{}", rig.context());
    assert!(rig.vm.wait_off(Duration::from_secs(60)));
    timings.push(format!("commission={}", secs(t)));
    let path = test_image::test_image_dir().join(image_file);
    let (st, img) = rig.anvil.request(
        "POST",
        "/images",
        Some(json!({"path": path, "name": "e2e-raid", "os": "debian", "release": "12"})),
    );
    assert!(st == 201 || st == 200, "import: {st} {img:#}");

    // --- refusals before anything starts ---------------------------------------
    for (raid, needle) in [
        (
            json!({"level": 1, "disks": ["name=vda", "serial=VDISK-RAID"]}),
            "two different disks",
        ),
        (json!({"level": 5}), "level 5"),
        (json!({"level": 1, "disks": ["name=vda"]}), "exactly two"),
    ] {
        let (st, p) = rig.action(
            "deploy",
            json!({"image": "e2e-raid", "ssh_keys": [SSH_KEY], "raid": raid}),
        );
        assert_eq!(st, 422, "{raid}: {p:#}");
        let detail = p["detail"].as_str().unwrap_or("");
        assert!(detail.contains(needle), "{raid}: {p:#}");
        assert_eq!(
            rig.anvil.get(&format!("/machines/{}", rig.id))["state"],
            "ready"
        );
    }
    // A root disk beside the mirror is a mistake, not silently ignored.
    let (st, p) = rig.action(
        "deploy",
        json!({"image": "e2e-raid", "ssh_keys": [SSH_KEY], "raid": {"level": 1},
               "root_disk": "largest"}),
    );
    assert_eq!(st, 422, "{p:#}");
    assert!(
        p["detail"].as_str().unwrap_or("").contains("raid.disks"),
        "{p:#}"
    );
    // An installer partitions the disks itself: RAID with one is refused,
    // not silently left out.
    let files = tempfile::tempdir().expect("temp dir");
    let (kernel, initrd) = (files.path().join("linux"), files.path().join("initrd.gz"));
    std::fs::write(&kernel, vec![0x5a; 70_000]).unwrap();
    std::fs::write(&initrd, b"never booted").unwrap();
    let (st, img) = rig.anvil.request(
        "POST",
        "/images",
        Some(
            json!({"kind": "installer", "name": "e2e-installer", "os": "debian",
                    "release": "12", "kernel_path": kernel, "initrd_path": initrd,
                    "repo_url": "http://mirror.example/debian"}),
        ),
    );
    assert!(st == 201 || st == 200, "installer image: {st} {img:#}");
    let (st, p) = rig.action(
        "deploy",
        json!({"image": "e2e-installer", "ssh_keys": [SSH_KEY], "raid": {"level": 1}}),
    );
    assert_eq!(st, 422, "{p:#}");
    assert!(
        p["detail"].as_str().unwrap_or("").contains("installer"),
        "{p:#}"
    );

    // --- deploy onto the mirror ------------------------------------------------
    let before = rig.vm.serial_log().len();
    let t = Instant::now();
    let (st, job) = rig.action(
        "deploy",
        json!({"image": "e2e-raid", "ssh_keys": [SSH_KEY], "raid": {"level": 1}}),
    );
    assert_eq!(st, 202, "{job:#}{}", rig.context());
    let m = rig.wait_state(&["deployed", "failed"], PHASE_TIMEOUT);
    assert_eq!(m["state"], "deployed", "{m:#}{}", rig.context());
    timings.push(format!("deploy_to_deployed={}", secs(t)));
    let run = rig.runs()["items"][0].clone();
    let kinds: Vec<&str> = run["steps"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["kind"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        kinds,
        [
            "erase",
            "raid",
            "write_image",
            "grow_root",
            "cloud_init",
            "boot_entry",
            "raid_sync"
        ],
        "{run:#}"
    );
    let raid = &step(&run, "raid")["result"];
    assert_eq!(raid["metadata"], "1.0", "{run:#}");
    let mut members: Vec<&str> = raid["members"]
        .as_array()
        .map(|m| m.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    members.sort();
    assert_eq!(members, ["nvme0n1", "vda"], "{run:#}");
    let array = raid["array"].as_str().expect("array name").to_string();
    assert!(array.starts_with("md"), "{run:#}");
    // The image steps wrote the array, not a member.
    assert_eq!(step(&run, "write_image")["result"]["disk"], array.as_str());
    assert_eq!(step(&run, "cloud_init")["result"]["disk"], array.as_str());
    assert_eq!(step(&run, "raid_sync")["result"]["degraded"], 0, "{run:#}");
    let entry = &step(&run, "boot_entry")["result"];
    if uefi {
        // One boot entry per member, on the member disks' ESP.
        assert_eq!(entry["firmware"], "uefi", "{run:#}");
        assert_eq!(entry["raid"]["array"], array.as_str(), "{run:#}");
        assert_eq!(
            entry["raid"]["members"].as_array().map(Vec::len),
            Some(2),
            "{run:#}"
        );
        // Both entries, first member first, right after each other (after
        // the network entries) in BootOrder.
        let nums: Vec<&str> = entry["entries"]
            .as_array()
            .map(|e| e.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(nums.len(), 2, "{run:#}");
        assert_eq!(entry["entry"], nums[0], "{run:#}");
        let order: Vec<String> = entry["boot_order"]
            .as_array()
            .map(|o| {
                o.iter()
                    .filter_map(Value::as_str)
                    .map(|n| format!("Boot{n}"))
                    .collect()
            })
            .unwrap_or_default();
        let pos = |n: &str| order.iter().position(|o| o == n);
        let first = pos(nums[0]).unwrap_or_else(|| panic!("{} not in BootOrder: {run:#}", nums[0]));
        assert_eq!(pos(nums[1]), Some(first + 1), "{run:#}");
    } else {
        assert_eq!(entry["firmware"], "bios", "{run:#}");
    }
    let at = |v: &Value| {
        v.as_str().and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
    };
    let durations: Vec<String> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let took = match (at(&s["started_at"]), at(&s["finished_at"])) {
                (Some(a), Some(b)) => format!("{:.1}s", (b - a).as_seconds_f64()),
                _ => "?".into(),
            };
            format!("{}:{took}", s["kind"].as_str().unwrap_or("?"))
        })
        .collect();
    timings.push(format!("steps={}", durations.join(",")));

    // It reboots into its disk (BIOS: the first disk, vda).
    let t = Instant::now();
    let markers = rig.wait_markers(before);
    timings.push(format!("deployed_to_disk_booted={}", secs(t)));
    for want in [
        format!("hostname={}", rig.hostname),
        format!("ssh-key={SSH_KEY}"),
    ] {
        assert!(
            markers.contains(&want),
            "{want:?} not among {markers:#?}{}",
            rig.context()
        );
    }
    assert!(rig.vm.wait_off(Duration::from_secs(60)), "still on");

    // --- on the host: one array, two identical members -------------------------
    let scratch = tempfile::tempdir().expect("temp dir");
    let vda = rig.raw("virtio.qcow2", scratch.path());
    let nvme = rig.raw("nvme.qcow2", scratch.path());
    let (ea, eb) = (
        examine(&vda).expect("mdadm --examine vda"),
        examine(&nvme).expect("mdadm --examine nvme"),
    );
    for ex in [&ea, &eb] {
        assert_eq!(field(ex, "Version"), "1.0", "{ex:#?}");
        assert_eq!(field(ex, "Raid Level"), "raid1", "{ex:#?}");
        assert_eq!(field(ex, "Raid Devices"), "2", "{ex:#?}");
        assert!(field(ex, "Array State").starts_with("AA "), "{ex:#?}");
        assert!(field(ex, "Name").starts_with("anvil-root"), "{ex:#?}");
        assert_eq!(field(ex, "State"), "clean", "{ex:#?}");
        // Data from sector 0 (mdadm prints no Data Offset for 1.0, only
        // the unused space before it), the superblock at the end.
        assert!(
            field(ex, "Unused Space").starts_with("before=0 sectors"),
            "{ex:#?}"
        );
        assert!(sectors(field(ex, "Super Offset")) > 1_000_000, "{ex:#?}");
    }
    assert_eq!(field(&ea, "Array UUID"), field(&eb, "Array UUID"));
    assert_eq!(field(&ea, "Events"), field(&eb, "Events"));
    assert_ne!(field(&ea, "Device UUID"), field(&eb, "Device UUID"));
    let data = sectors(field(&ea, "Used Dev Size")) as usize * 512;
    let (a, b) = (std::fs::read(&vda).unwrap(), std::fs::read(&nvme).unwrap());
    // Each member starts as the image does: the MBR boot code the BIOS
    // runs, or the GPT header the UEFI firmware reads (sector 1).
    if uefi {
        assert_eq!(&a[512..520], b"EFI PART", "vda has no GPT at sector 1");
        assert_eq!(&b[512..520], b"EFI PART", "nvme has no GPT at sector 1");
    } else {
        let image = std::fs::read(test_image::test_image_dir().join(image_file)).unwrap();
        assert_eq!(
            a[..440],
            image[..440],
            "vda does not start with the image's MBR code"
        );
        assert_eq!(
            b[..440],
            image[..440],
            "nvme does not start with the image's MBR code"
        );
    }
    assert!(data > 500 * MIB && data <= a.len(), "used dev size {data}");
    // Where the disks held different old data, the mirror now holds one
    // copy on both: md resynced the whole array (not only the image).
    for off in [100 * MIB, 300 * MIB, 480 * MIB] {
        assert!(
            a[off..off + 4 * MIB] == b[off..off + 4 * MIB],
            "the members still differ at {off}: no resync"
        );
    }
    let first_diff = a[..data].iter().zip(&b[..data]).position(|(x, y)| x != y);
    assert_eq!(
        first_diff, None,
        "the members differ over the array's data ({data} bytes)"
    );
    drop((a, b));

    // --- the second disk alone boots -------------------------------------------
    // QEMU gets only the NVMe member's file, as its (virtio) boot disk.
    let args_second: Vec<String> = {
        let lines: Vec<&str> = args_both.lines().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let l = lines[i];
            let next = lines.get(i + 1).copied().unwrap_or("");
            if l == "-drive" && next.contains("id=d1,")
                || l == "-device" && next.starts_with("nvme,")
            {
                i += 2;
                continue;
            }
            out.push(l.replace(
                &rig.vm.dir.join("virtio.qcow2").display().to_string(),
                &rig.vm.dir.join("nvme.qcow2").display().to_string(),
            ));
            i += 1;
        }
        out
    };
    assert!(
        !args_second
            .iter()
            .any(|a| a.contains("virtio.qcow2") || a.starts_with("nvme,")),
        "{args_second:?}"
    );
    std::fs::write(rig.vm.dir.join("vm.args"), args_second.join("\n") + "\n").unwrap();
    let before = rig.vm.serial_log().len();
    let t = Instant::now();
    let (st, job) = rig.action("power-on", json!({}));
    assert_eq!(st, 202, "power-on: {job:#}");
    let serial_before = before;
    let markers = {
        // A new QEMU may start the serial file afresh.
        let deadline = Instant::now() + PHASE_TIMEOUT;
        loop {
            let serial = rig.vm.serial_log();
            let from = if serial.len() >= serial_before {
                serial_before
            } else {
                0
            };
            let m = test_image::markers(serial.get(from..).unwrap_or(""));
            if m.last().map(String::as_str) == Some("done") {
                break m;
            }
            assert!(
                Instant::now() < deadline,
                "the second disk alone did not boot: {m:?}{}",
                rig.context()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    timings.push(format!("second_disk_alone_booted={}", secs(t)));
    assert!(
        markers.contains(&format!("hostname={}", rig.hostname)),
        "{markers:#?}{}",
        rig.context()
    );
    assert!(rig.vm.wait_off(Duration::from_secs(60)), "still on");
    std::fs::write(rig.vm.dir.join("vm.args"), &args_both).unwrap();

    // --- release: both members erased ------------------------------------------
    // BIOS only, as in e2e_deploy.rs: QEMU's OVMF keeps no NVRAM across the
    // power cycle a release starts with, and with a bootable disk and no
    // boot entries it starts the disk instead of the network, so the
    // release ramdisk never boots in this lab (a real machine keeps its
    // entries, network first, which boot_entry set).
    if uefi {
        record(&format!(
            "e2e-deploy-raid timing: firmware={firmware} image={image_file} disks=2x512MiB {} total={}",
            timings.join(" "),
            secs(started)
        ));
        return;
    }
    let t = Instant::now();
    let (st, job) = rig.action("release", json!({}));
    assert_eq!(st, 202, "{job:#}");
    let m = rig.wait_state(&["ready", "failed"], PHASE_TIMEOUT);
    assert_eq!(m["state"], "ready", "{m:#}{}", rig.context());
    assert!(
        rig.vm.wait_off(Duration::from_secs(60)),
        "still on after release"
    );
    timings.push(format!("release={}", secs(t)));
    let run = rig.runs()["items"][0].clone();
    let erased: Vec<&str> = step(&run, "erase")["result"]["disks"]
        .as_array()
        .map(|d| d.iter().filter_map(|d| d["disk"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        erased.contains(&"vda") && erased.contains(&"nvme0n1"),
        "{run:#}"
    );
    for qcow2 in ["virtio.qcow2", "nvme.qcow2"] {
        let raw = rig.raw(qcow2, scratch.path());
        let d = std::fs::read(&raw).unwrap();
        assert!(d[..MIB].iter().all(|&b| b == 0), "{qcow2}: first MiB");
        assert!(
            d[d.len() - MIB..].iter().all(|&b| b == 0),
            "{qcow2}: last MiB"
        );
        assert!(examine(&raw).is_err(), "{qcow2}: an md superblock is left");
    }

    record(&format!(
        "e2e-deploy-raid timing: firmware={firmware} image={image_file} disks=2x512MiB {} total={}",
        timings.join(" "),
        secs(started)
    ));
}
