//! End to end, deployment: a QEMU machine (TCG) behind an `ipmi_sim` BMC,
//! with an empty virtio disk (the smallest, so the root disk) and an NVMe
//! disk, on the boot network of a test namespace where Anvil is the only
//! DHCP/TFTP/HTTP server. The machine is commissioned, then deployed with
//! the test disk image of `scripts/test-image/build.sh` (imported as raw for
//! BIOS, as qcow2 for UEFI) through Anvil's own network boot, power driver
//! and agent; it then boots its own disk, whose init prints the hostname
//! and SSH key it reads from the `CIDATA` partition Anvil wrote, and powers
//! off. BIOS only, after that: released, the disk's first and last MiB read
//! back as zeros and it has no partition table; an image corrupted after
//! import fails the deploy with a clear reason and the machine does not end
//! `deployed`.
//!
//! Where everything runs: see e2e_rack.rs and e2e_commission.rs. Needs root,
//! the packages of `e2e::prerequisites`, `openipmi ipmitool`, and the
//! ramdisk and test images (built on first use); `ANVIL_SKIP_VM_TESTS=1`
//! skips it. Timings (per phase) go to stdout and target/e2e-boot/timings.txt.

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

/// Any one phase (commission, deploy, boot from disk, release) may take
/// this long in TCG with another VM test beside it.
const PHASE_TIMEOUT: Duration = Duration::from_secs(420);
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGRlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn+AgYKD e2e@anvil";
const USER_DATA: &str = "#cloud-config\nruncmd:\n  - echo deployed-by-anvil\n";

/// One lab: Anvil, a BMC and its VM, the machine enrolled.
struct Rig {
    // Field order is drop order: the VM (QEMU killed) before the lab.
    vm: IpmiVm,
    anvil: Anvil,
    lab: Lab,
    id: String,
    hostname: String,
}

impl Rig {
    fn start(name: &str, uefi: bool) -> Rig {
        commission_lab::prerequisites();
        let lab = Lab::new();
        let anvil = Anvil::start(&lab, &deploy_lab_toml(&lab, "e2e", 600, ""));
        commission_lab::install_ramdisk(&anvil.data_dir);
        let vm = IpmiVm::start(&lab, false);
        let spec = VmSpec {
            manufacturer: "Anvil Test Works".into(),
            product: "AT-2000 Deploy".into(),
            serial: format!("AT-DEP-{:04}", lab.n),
            uuid: format!("6c6f2e1c-3a4d-4a55-9a0b-0a0b0c0d{:04x}", lab.n % 0xffff),
            macs: [lab.mac(1), lab.mac(2)],
            virtio_disk: (512, format!("VDISK-{name}")),
            nvme_disk: (1024, format!("NVME-{name}")),
            uefi,
        };
        vm.configure(&spec);
        // A deployed machine reboots into its disk: QEMU must not exit on
        // the agent's reboot (the commissioning tests want it to).
        vm.allow_reboot();
        let hostname = format!("deploy-{name}");
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
        Rig {
            vm,
            anvil,
            lab,
            id,
            hostname,
        }
    }

    fn state(&self) -> String {
        self.anvil.get(&format!("/machines/{}", self.id))["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Polls until the machine is in one of `states`; its JSON.
    fn wait_state(&self, states: &[&str], within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let m = self.anvil.get(&format!("/machines/{}", self.id));
            if states.contains(&m["state"].as_str().unwrap_or("")) {
                return m;
            }
            if Instant::now() > deadline {
                panic!(
                    "machine still {} after {} s (waiting for {states:?}){}",
                    m["state"],
                    within.as_secs(),
                    self.context()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn action(&self, action: &str, body: Value) -> Value {
        let (st, job) = self.anvil.request(
            "POST",
            &format!("/machines/{}/actions/{action}", self.id),
            Some(body),
        );
        assert_eq!(st, 202, "{action}: {job:#}{}", self.context());
        job
    }

    fn commission(&self) {
        self.action("commission", json!({}));
        let m = self.wait_state(&["ready", "failed"], PHASE_TIMEOUT);
        assert_eq!(m["state"], "ready", "{m:#}{}", self.context());
        assert!(
            self.vm.wait_off(Duration::from_secs(60)),
            "still on after commissioning{}",
            self.context()
        );
    }

    /// `POST /images {"path": …}` of a test image file; the image's name.
    fn import(&self, file: &str, name: &str) -> Value {
        let path = test_image::test_image_dir().join(file);
        let (st, img) = self.anvil.request(
            "POST",
            "/images",
            Some(json!({"path": path, "name": name, "os": "debian", "release": "12"})),
        );
        assert!(st == 201 || st == 200, "import {file}: {st} {img:#}");
        img
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

    /// The VM's virtio disk as raw bytes (a copy; QEMU must be off).
    fn root_disk_raw(&self, scratch: &Path) -> Vec<u8> {
        let raw = scratch.join("root-disk.raw");
        let o = Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(self.vm.dir.join("virtio.qcow2"))
            .arg(&raw)
            .output()
            .expect("qemu-img");
        assert!(o.status.success(), "qemu-img convert: {o:?}");
        let bytes = std::fs::read(&raw).expect("read disk copy");
        let _ = std::fs::remove_file(&raw);
        bytes
    }
}

/// `steps=erase:0.4s,write_image:3.1s,…` from the run's step times.
fn step_durations(run: &Value) -> String {
    use time::format_description::well_known::Rfc3339;
    let at = |v: &Value| {
        v.as_str()
            .and_then(|s| time::OffsetDateTime::parse(s, &Rfc3339).ok())
    };
    let parts: Vec<String> = run["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    let d = match (at(&s["started_at"]), at(&s["finished_at"])) {
                        (Some(a), Some(b)) => format!("{:.1}s", (b - a).as_seconds_f64()),
                        _ => "?".into(),
                    };
                    format!("{}:{d}", s["kind"].as_str().unwrap_or("?"))
                })
                .collect()
        })
        .unwrap_or_default();
    format!("steps={}", parts.join(","))
}

/// Seconds since `t`, for the timing line.
fn secs(t: Instant) -> String {
    format!("{:.1}s", t.elapsed().as_secs_f64())
}

fn record(line: &str) {
    e2e::append_timing("timings.txt", line);
}

/// Deploys `image` and waits for `deployed`, then for the machine's own
/// disk to boot and power off; the image's `ANVIL-DEPLOYED` markers.
/// Through the REST API, or `via_cli` as a rack engineer would:
/// `anvil machine deploy ID --image … --ssh-key FILE --user-data FILE
/// --wait`, which must exit 0 once the machine is deployed.
fn deploy_and_boot(
    rig: &Rig,
    image: &str,
    via_cli: bool,
    timings: &mut Vec<String>,
) -> Vec<String> {
    let before = rig.vm.serial_log().len();
    let t = Instant::now();
    if via_cli {
        let files = tempfile::tempdir().expect("temp dir");
        let key = files.path().join("id_ed25519.pub");
        std::fs::write(&key, format!("{SSH_KEY}\n")).expect("write key");
        let user_data = files.path().join("user-data");
        std::fs::write(&user_data, USER_DATA).expect("write user data");
        let o = Lab::command_in(&rig.lab.ns, common::ANVIL)
            .args(["machine", "deploy", &rig.id, "--image", image, "--ssh-key"])
            .arg(&key)
            .arg("--user-data")
            .arg(&user_data)
            .args(["--wait", "-o", "json"])
            .env("ANVIL_URL", &rig.anvil.url)
            .env("ANVIL_TOKEN", &rig.anvil.token)
            .env("NO_COLOR", "1")
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("all_proxy")
            .env_remove("ALL_PROXY")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("cannot run anvil machine deploy");
        assert!(
            o.status.success(),
            "anvil machine deploy --wait: {}\n{}{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            rig.context()
        );
    } else {
        let job = rig.action(
            "deploy",
            json!({"image": image, "ssh_keys": [SSH_KEY], "user_data": USER_DATA}),
        );
        assert!(job["id"].is_string(), "{job:#}");
    }
    let m = rig.wait_state(&["deployed", "failed"], PHASE_TIMEOUT);
    assert_eq!(m["state"], "deployed", "{m:#}{}", rig.context());
    timings.push(format!("deploy_to_deployed={}", secs(t)));
    let run = &rig.runs()["items"][0];
    assert_eq!(run["purpose"], "deployment", "{run:#}");
    assert_eq!(run["state"], "succeeded", "{run:#}");
    let kinds: Vec<&str> = run["steps"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["kind"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        kinds,
        [
            "erase",
            "write_image",
            "grow_root",
            "cloud_init",
            "boot_entry"
        ],
        "{run:#}"
    );
    let write = &run["steps"][1]["result"];
    assert!(write["sha256"].is_string(), "{run:#}");
    timings.push(step_durations(run));

    // The agent rebooted; Anvil's script for a deployed machine boots the
    // disk, whose init prints its markers and powers off.
    let t2 = Instant::now();
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let serial = rig.vm.serial_log();
        let tail = serial.get(before..).unwrap_or("");
        let markers = test_image::markers(tail);
        if markers.last().map(String::as_str) == Some("done") {
            timings.push(format!("deployed_to_disk_booted={}", secs(t2)));
            timings.push(format!("deploy_to_disk_booted={}", secs(t)));
            return markers;
        }
        if Instant::now() > deadline {
            panic!(
                "the deployed disk did not boot and print its markers in {} s: {markers:?}{}",
                PHASE_TIMEOUT.as_secs(),
                rig.context()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn assert_booted_with_our_data(rig: &Rig, markers: &[String], firmware: &str) {
    let want = [
        format!("boot={firmware}"),
        format!("hostname={}", rig.hostname),
        format!("ssh-key={SSH_KEY}"),
        format!("user-data-sha256={}", test_image::sha256_hex(USER_DATA)),
    ];
    for w in &want {
        assert!(
            markers.iter().any(|m| m == w),
            "{w:?} not among the deployed disk's markers {markers:#?}{}",
            rig.context()
        );
    }
    assert!(
        markers
            .iter()
            .any(|m| m.starts_with("source=nocloud dev=/dev/vda") && m.ends_with("fs=vfat")),
        "the CIDATA partition was not found: {markers:#?}"
    );
    // The root partition and its file system were grown well past the
    // image's 8 MiB root (the disk is 512 MiB).
    let root = markers
        .iter()
        .find(|m| m.starts_with("root="))
        .unwrap_or_else(|| panic!("no root line: {markers:#?}"));
    let fs_bytes: u64 = root
        .split_whitespace()
        .find_map(|p| p.strip_prefix("fs-bytes="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        fs_bytes > 256 << 20,
        "root not grown: {root} (disk 512 MiB)"
    );
}

/// The stored copy of an imported image, corrupted so that it still
/// decompresses to the same size but one byte differs: only the agent's
/// sha256 check can notice.
fn corrupt_stored_image(data_dir: &Path, sha256: &str, source: &Path) {
    let stored = find_file(data_dir, &format!("{sha256}.raw.zst"))
        .unwrap_or_else(|| panic!("{sha256}.raw.zst not under {}", data_dir.display()));
    let mut raw = std::fs::read(source).expect("read source image");
    let i = raw
        .iter()
        .position(|&b| b != 0)
        .expect("a byte that is not zero");
    raw[i] ^= if raw[i] == 0x80 { 0x40 } else { 0x80 };
    let tmp = stored.with_extension("corrupt");
    std::fs::write(&tmp, &raw).expect("write");
    let o = Command::new("zstd")
        .args(["-q", "-f", "-3", "--rm"])
        .arg(&tmp)
        .arg("-o")
        .arg(&stored)
        .output()
        .expect("zstd (Debian zstd)");
    assert!(o.status.success(), "zstd: {o:?}");
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().and_then(|n| n.to_str()) == Some(name) {
            return Some(p);
        }
    }
    None
}

#[test]
fn bios_machine_is_deployed_boots_its_disk_is_released_and_refuses_a_corrupt_image() {
    if e2e::prerequisites(false).is_none() {
        return;
    }
    let started = Instant::now();
    let rig = Rig::start("bios", false);
    let scratch = tempfile::tempdir().expect("temp dir");
    let mut timings = Vec::new();

    let t = Instant::now();
    rig.commission();
    timings.push(format!("commission={}", secs(t)));
    let img = rig.import("bios.raw", "e2e-bios-raw");
    assert_eq!(
        img["source_format"].as_str().unwrap_or("raw"),
        "raw",
        "{img:#}"
    );

    let markers = deploy_and_boot(&rig, "e2e-bios-raw", false, &mut timings);
    assert_booted_with_our_data(&rig, &markers, "bios");
    assert!(
        rig.vm.wait_off(Duration::from_secs(60)),
        "the deployed test image powers off"
    );
    // The image is in use: it cannot be deleted.
    let (st, body) = rig.anvil.request("DELETE", "/images/e2e-bios-raw", None);
    assert_eq!(st, 409, "delete an image in use: {body:#}");

    // --- release: the disks erased --------------------------------------------
    let t = Instant::now();
    rig.action("release", json!({}));
    let m = rig.wait_state(&["ready", "failed"], PHASE_TIMEOUT);
    assert_eq!(m["state"], "ready", "{m:#}{}", rig.context());
    timings.push(format!("release={}", secs(t)));
    let run = &rig.runs()["items"][0];
    assert_eq!(run["purpose"], "release", "{run:#}");
    assert!(
        rig.vm.wait_off(Duration::from_secs(60)),
        "still on after release{}",
        rig.context()
    );
    let disk = rig.root_disk_raw(scratch.path());
    const MIB: usize = 1 << 20;
    assert!(
        disk[..MIB].iter().all(|&b| b == 0),
        "the first MiB of the released disk is not zero"
    );
    assert!(
        disk[disk.len() - MIB..].iter().all(|&b| b == 0),
        "the last MiB of the released disk is not zero"
    );
    // No partition table is left: the MBR (sector 0), the GPT header
    // (sector 1) and its backup (the last sector) are inside those MiBs.
    drop(disk);

    // --- an image corrupted after import fails the deploy ---------------------
    // Released, the image is free again; its stored copy is corrupted.
    let sha = img["sha256"].as_str().expect("sha256").to_string();
    corrupt_stored_image(
        &rig.anvil.data_dir,
        &sha,
        &test_image::test_image_dir().join("bios.raw"),
    );
    let t = Instant::now();
    rig.action(
        "deploy",
        json!({"image": "e2e-bios-raw", "ssh_keys": [SSH_KEY]}),
    );
    let m = rig.wait_state(&["deployed", "failed"], PHASE_TIMEOUT);
    assert_eq!(m["state"], "failed", "{m:#}{}", rig.context());
    timings.push(format!("corrupt_deploy_to_failed={}", secs(t)));
    let run = &rig.runs()["items"][0];
    let reason = run["failure_reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("write_image") && reason.contains("sha256"),
        "the reason names the step and the checksum: {run:#}"
    );
    assert_ne!(rig.state(), "deployed");

    record(&format!(
        "e2e-deploy timing: firmware=bios image=raw-64MiB {} total={}",
        timings.join(" "),
        secs(started)
    ));
}

#[test]
fn uefi_machine_deployed_from_a_qcow2_import_boots_its_disk() {
    if e2e::prerequisites(true).is_none() {
        return;
    }
    let started = Instant::now();
    let rig = Rig::start("uefi", true);
    let mut timings = Vec::new();
    let t = Instant::now();
    rig.commission();
    timings.push(format!("commission={}", secs(t)));
    let img = rig.import("uefi.qcow2", "e2e-uefi-qcow2");
    assert_eq!(img["firmware"], "uefi", "{img:#}");
    let markers = deploy_and_boot(&rig, "e2e-uefi-qcow2", true, &mut timings);
    assert_booted_with_our_data(&rig, &markers, "uefi");
    record(&format!(
        "e2e-deploy timing: firmware=uefi image=qcow2-64MiB {} total={}",
        timings.join(" "),
        secs(started)
    ));
}
