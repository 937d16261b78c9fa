//! Deployment benchmark (issue #7, "Measure"; docs/benchmarks.md,
//! "Deployment"). Not a timed test: both tests are `#[ignore]`d and run by
//! `scripts/bench/deploy.sh`, which prints the figures. Everything runs in
//! the QEMU lab of the end-to-end tests (`e2e_deploy.rs`): a TCG machine
//! behind an `ipmi_sim` BMC, network-booted by Anvil's own DHCP/TFTP/HTTP,
//! commissioned and deployed by the real agent in the real ramdisk.
//!
//! BIOS test, one machine, one run:
//! 1. ready → booted from disk for the 64 MiB test image (1 GiB of RAM, as
//!    in e2e_deploy.rs), per step;
//! 2. the node's RAM is cut to 256 MiB for the rest (the small-node
//!    figure: the largest image must deploy there);
//! 3. in a rescue boot of the same machine, over SSH: a plain
//!    `wget -O- URL | dd of=/dev/vda bs=1M conv=fsync` of a dense 512 MiB
//!    raw image served by busybox httpd in the lab, and `wget -O- URL |
//!    sha256sum` of it (what hashing costs in this guest);
//! 4. deployments of 512 MiB and 2 GiB images, sparse (8 MiB of data) and
//!    dense (85 % data), each booted from disk and released; the dense
//!    512 MiB write is the one compared with the plain copy, and every
//!    write_image reports the agent's CPU seconds.
//!
//! UEFI test: ready → booted from disk for the 64 MiB test image.
//!
//! Each figure goes to stdout and to target/e2e-boot/deploy-bench.txt as a
//! `deploy-bench:` line. Needs what e2e_deploy.rs needs, plus `ssh` and
//! `ssh-keygen` (Debian openssh-client), and about 8 GB of free disk in
//! target/ while it runs (scratch images are deleted at the end).

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
use test_image::Table;

/// One phase (commission, deploy, disk boot, release) of the largest image
/// in TCG with another engineer's VM beside it.
const PHASE_TIMEOUT: Duration = Duration::from_secs(1500);
const SSH_KEY_COMMENT: &str = "deploy-bench@anvil";
const MIB: u64 = 1 << 20;
/// The virtio root disk (qcow2, so only what is written takes room) holds
/// the 2 GiB image plus root growth and the cloud-init partition; the NVMe
/// disk is larger so the virtio one stays the smallest, hence the root.
const ROOT_DISK_MIB: u64 = 3072;
const OTHER_DISK_MIB: u64 = 4096;
const SMALL_NODE_MIB: u32 = 256;
/// Pseudo-random data in a "sparse" image; the rest is zeros.
const SPARSE_PAYLOAD: u64 = 8 * MIB;

fn record(line: &str) {
    e2e::append_timing("deploy-bench.txt", &format!("deploy-bench: {line}"));
}

fn rfc3339(v: &Value) -> Option<time::OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    v.as_str()
        .and_then(|s| time::OffsetDateTime::parse(s, &Rfc3339).ok())
}

fn between(a: &Value, b: &Value) -> Option<f64> {
    Some((rfc3339(b)? - rfc3339(a)?).as_seconds_f64())
}

fn fmt_secs(s: Option<f64>) -> String {
    s.map_or("?".into(), |s| format!("{s:.1}s"))
}

struct Rig {
    // Field order is drop order: the VM (QEMU killed) before the lab.
    vm: IpmiVm,
    anvil: Anvil,
    lab: Lab,
    id: String,
    mac: String,
}

impl Rig {
    fn start(name: &str, uefi: bool) -> Rig {
        commission_lab::prerequisites();
        let lab = Lab::new();
        let anvil = Anvil::start(
            &lab,
            &deploy_lab_toml(&lab, "bench", 900, "\n[deploy]\ntimeout_secs = 2400\n"),
        );
        commission_lab::install_ramdisk(&anvil.data_dir);
        let vm = IpmiVm::start(&lab, false);
        let spec = VmSpec {
            manufacturer: "Anvil Test Works".into(),
            product: "AT-2000 Bench".into(),
            serial: format!("AT-BENCH-{:04}", lab.n),
            uuid: format!("6c6f2e1c-3a4d-4a55-9a0b-0a0b0c1d{:04x}", lab.n % 0xffff),
            macs: [lab.mac(1), lab.mac(2)],
            virtio_disk: (ROOT_DISK_MIB, format!("VDISK-{name}")),
            nvme_disk: (OTHER_DISK_MIB, format!("NVME-{name}")),
            uefi,
        };
        vm.configure(&spec);
        vm.allow_reboot();
        let (st, m) = anvil.request(
            "POST",
            "/machines",
            Some(json!({
                "hostname": format!("bench-{name}"),
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
            mac: spec.macs[0].clone(),
        }
    }

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
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn action(&self, action: &str, body: Value) {
        let (st, job) = self.anvil.request(
            "POST",
            &format!("/machines/{}/actions/{action}", self.id),
            Some(body),
        );
        assert_eq!(st, 202, "{action}: {job:#}{}", self.context());
    }

    fn newest_run(&self) -> Value {
        self.anvil
            .get(&format!("/machines/{}/commissioning-runs", self.id))["items"][0]
            .clone()
    }

    fn context(&self) -> String {
        format!(
            "\n===== newest run =====\n{:#}\n===== BMC calls =====\n{:?}\n===== serial console (tail) =====\n{}\n===== logs ====={}",
            self.newest_run(),
            self.vm.calls(),
            tail(&e2e::printable(&self.vm.serial_log()), 6000),
            self.lab.log_tails()
        )
    }

    fn commission(&self) -> f64 {
        let t = Instant::now();
        self.action("commission", json!({}));
        let m = self.wait_state(&["ready", "failed"], PHASE_TIMEOUT);
        assert_eq!(m["state"], "ready", "{m:#}{}", self.context());
        assert!(
            self.vm.wait_off(Duration::from_secs(120)),
            "still on after commissioning{}",
            self.context()
        );
        t.elapsed().as_secs_f64()
    }

    /// Imports an image file by path, with a timeout fit for a 2 GiB
    /// import by a debug build (the harness's client gives up after 30 s).
    /// The image JSON and the import's wall time.
    fn import(&self, path: &Path, name: &str) -> (Value, f64) {
        let url = format!("{}/api/v1/images", self.anvil.url);
        let token = self.anvil.token.clone();
        let body = json!({"path": path, "name": name, "os": "debian", "release": "12"});
        let t = Instant::now();
        let (st, img) = e2e::in_netns(&self.anvil.ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let r = reqwest::Client::builder()
                    .timeout(Duration::from_secs(1800))
                    .build()
                    .unwrap()
                    .post(&url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("POST {url}: {e}"));
                let st = r.status().as_u16();
                let v = r.json::<Value>().await.unwrap_or(Value::Null);
                (st, v)
            })
        });
        assert!(
            st == 201 || st == 200,
            "import {}: {st} {img:#}",
            path.display()
        );
        (img, t.elapsed().as_secs_f64())
    }

    /// Deploys `image`, waits for `deployed`, then for the deployed disk to
    /// boot, print its markers and power off. The run's JSON and the
    /// timings.
    fn deploy_and_boot(&self, image: &str, key: &str) -> Deployment {
        let before = self.vm.serial_log().len();
        let t = Instant::now();
        self.action("deploy", json!({"image": image, "ssh_keys": [key]}));
        let m = self.wait_state(&["deployed", "failed"], PHASE_TIMEOUT);
        assert_eq!(m["state"], "deployed", "{m:#}{}", self.context());
        let to_deployed = t.elapsed().as_secs_f64();
        let run = self.newest_run();
        assert_eq!(run["purpose"], "deployment", "{run:#}");
        let t2 = Instant::now();
        let deadline = Instant::now() + PHASE_TIMEOUT;
        let markers = loop {
            let serial = self.vm.serial_log();
            let markers = test_image::markers(serial.get(before..).unwrap_or(""));
            if markers.last().map(String::as_str) == Some("done") {
                break markers;
            }
            assert!(
                Instant::now() < deadline,
                "the deployed disk did not boot: {markers:?}{}",
                self.context()
            );
            std::thread::sleep(Duration::from_millis(250));
        };
        let disk_boot = t2.elapsed().as_secs_f64();
        let total = t.elapsed().as_secs_f64();
        assert!(
            markers.iter().any(|m| m == &format!("ssh-key={key}")),
            "the deployed disk did not read our key: {markers:#?}"
        );
        assert!(
            self.vm.wait_off(Duration::from_secs(120)),
            "the deployed test image powers off{}",
            self.context()
        );
        Deployment {
            run,
            to_deployed,
            disk_boot,
            total,
        }
    }

    fn release(&self) -> f64 {
        let t = Instant::now();
        self.action("release", json!({}));
        let m = self.wait_state(&["ready", "failed"], PHASE_TIMEOUT);
        assert_eq!(m["state"], "ready", "{m:#}{}", self.context());
        assert!(
            self.vm.wait_off(Duration::from_secs(120)),
            "still on after release{}",
            self.context()
        );
        t.elapsed().as_secs_f64()
    }

    /// The machine's address from its lease on the boot network.
    fn address(&self) -> String {
        let leases = self.anvil.leases(&self.mac);
        leases
            .iter()
            .find_map(|l| l["address"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no lease for {}: {leases:#?}", self.mac))
    }
}

struct Deployment {
    run: Value,
    /// deploy action → state `deployed`.
    to_deployed: f64,
    /// `deployed` seen → the disk's init printed `done`.
    disk_boot: f64,
    /// deploy action → the disk's init printed `done`.
    total: f64,
}

impl Deployment {
    fn step(&self, kind: &str) -> &Value {
        self.run["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["kind"] == kind))
            .unwrap_or_else(|| panic!("no {kind} step: {:#}", self.run))
    }

    fn step_secs(&self, kind: &str) -> Option<f64> {
        let s = self.step(kind);
        between(&s["started_at"], &s["finished_at"])
    }

    /// Power-on → agent registered (firmware, iPXE, kernel, ramdisk).
    fn ramdisk_boot(&self) -> Option<f64> {
        between(&self.run["started_at"], &self.run["registered_at"])
    }

    fn write(&self) -> &Value {
        &self.step("write_image")["result"]
    }

    /// `ramdisk_boot=… erase=… … boot_entry=… reboot_to_disk_boot=…`.
    fn per_step(&self) -> String {
        let steps = [
            "erase",
            "write_image",
            "grow_root",
            "cloud_init",
            "boot_entry",
        ]
        .iter()
        .map(|k| format!("{k}={}", fmt_secs(self.step_secs(k))))
        .collect::<Vec<_>>()
        .join(" ");
        let first_step = between(
            &self.run["registered_at"],
            &self.step("erase")["started_at"],
        );
        format!(
            "ramdisk_boot={} registered_to_first_step={} {steps} to_deployed={:.1}s \
             reboot_to_disk_boot={:.1}s ready_to_disk_booted={:.1}s",
            fmt_secs(self.ramdisk_boot()),
            fmt_secs(first_step),
            self.to_deployed,
            self.disk_boot,
            self.total
        )
    }

    /// `write_image`'s seconds, the agent's CPU seconds, bytes written.
    fn write_figures(&self) -> (f64, f64, f64) {
        let w = self.write();
        let secs = w["elapsed_secs"].as_f64().expect("elapsed_secs");
        let cpu = w["cpu_secs"]
            .as_f64()
            .unwrap_or_else(|| panic!("write_image result without cpu_secs: {w:#}"));
        assert_eq!(
            w["attempts"], 1,
            "a benchmark write must not be retried: {w:#}"
        );
        (secs, cpu, w["bytes_written"].as_f64().unwrap_or(0.0))
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// An ed25519 key pair for the rescue system: (private key path, public key
/// line).
fn ssh_key(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id_ed25519");
    test_image::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", SSH_KEY_COMMENT, "-f"])
            .arg(&key),
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    (key, public.trim().to_string())
}

/// Runs `script` as root on the rescue system (busybox sh), from the lab's
/// namespace; its standard output.
fn ssh(rig: &Rig, key: &Path, addr: &str, script: &str) -> String {
    let o = Lab::command_in(&rig.lab.ns, "ssh")
        .arg("-i")
        .arg(key)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=30",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(format!("root@{addr}"))
        .arg(script)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("ssh (Debian openssh-client)");
    assert!(
        o.status.success(),
        "ssh {addr} {script:?}: {}\n{}{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        rig.context()
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Seconds between the two `/proc/uptime` readings the script prints as
/// `t0 <secs>` and `t1 <secs>` around the timed command (measured in the
/// guest: no SSH set-up inside the figure).
fn guest_secs(out: &str) -> f64 {
    let get = |tag: &str| -> f64 {
        out.lines()
            .find_map(|l| l.strip_prefix(tag))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {tag:?} line in {out:?}"))
    };
    get("t1 ") - get("t0 ")
}

/// A sized test image for the series: `<dir>/<name>.raw`.
fn make_image(dir: &Path, name: &str, image_bytes: u64, dense: bool) -> PathBuf {
    let dst = dir.join(format!("{name}.raw"));
    // Dense: 85 % of what is left after the 21 MiB boot partition and the
    // ext4 metadata; sparse: a fixed 8 MiB.
    let payload = if dense {
        (image_bytes - 24 * MIB) / 100 * 85 / 4096 * 4096
    } else {
        SPARSE_PAYLOAD
    };
    let t = Instant::now();
    test_image::sized_image(
        &test_image::test_image_dir().join("bios.raw"),
        Table::Mbr,
        &dst,
        image_bytes,
        payload,
    );
    record(&format!(
        "made image {name}: {} MiB, payload {} MiB, in {:.1}s",
        image_bytes / MIB,
        payload / MIB,
        t.elapsed().as_secs_f64()
    ));
    dst
}

fn load() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn host_line() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "host: nproc={nproc} loadavg={} accel=tcg (qemu -accel tcg, 2 vCPUs)",
        load()
    )
}

#[test]
#[ignore = "benchmark: run by scripts/bench/deploy.sh"]
fn deploy_bench_bios() {
    if e2e::prerequisites(false).is_none() {
        return;
    }
    let started = Instant::now();
    record(&host_line());
    let scratch_parent = e2e::workspace_root().join("target");
    let scratch = tempfile::Builder::new()
        .prefix("deploy-bench-")
        .tempdir_in(&scratch_parent)
        .expect("scratch dir");
    let (key_path, key) = ssh_key(scratch.path());

    // Make every image first: generating the payloads is host CPU, and the
    // VM runs must not share the cores with it.
    let images_dir = scratch.path().join("images");
    std::fs::create_dir_all(&images_dir).unwrap();
    let series: Vec<(&str, u64, bool)> = vec![
        ("sparse-512m", 512 * MIB, false),
        ("dense-512m", 512 * MIB, true),
        ("sparse-2g", 2048 * MIB, false),
        ("dense-2g", 2048 * MIB, true),
    ];
    let files: Vec<PathBuf> = series
        .iter()
        .map(|(name, size, dense)| make_image(&images_dir, name, *size, *dense))
        .collect();

    let rig = Rig::start("bios", false);
    record(&format!("bios commission={:.1}s", rig.commission()));

    // --- 1. the 64 MiB test image, 1 GiB of RAM ---------------------------------
    let small = test_image::test_image_dir().join("bios.raw");
    let (img, import_secs) = rig.import(&small, "bench-bios-64m");
    assert_eq!(img["raw_size"], 64 * MIB, "{img:#}");
    let d = rig.deploy_and_boot("bench-bios-64m", &key);
    record(&format!(
        "bios image=64MiB(test image) mem=1024MiB import={import_secs:.1}s {}",
        d.per_step()
    ));
    let (w_secs, w_cpu, _) = d.write_figures();
    record(&format!(
        "bios image=64MiB write_image={w_secs:.2}s cpu={w_cpu:.2}s"
    ));
    let bios_64_total = d.total;
    record(&format!("bios release={:.1}s", rig.release()));

    // --- 2. the rest on a 256 MiB node -----------------------------------------
    rig.vm.set_memory_mib(SMALL_NODE_MIB);

    // --- 3. plain copy in a rescue boot of the same machine ---------------------
    let dense_512 = &files[1];
    let dense_512_size = std::fs::metadata(dense_512).unwrap().len();
    let port = 8099;
    let mut httpd = Lab::command_in(&rig.lab.ns, "busybox");
    httpd
        .args(["httpd", "-f", "-p"])
        .arg(format!("{}:{port}", rig.lab.server_ip()))
        .arg("-h")
        .arg(&images_dir);
    rig.lab.spawn("httpd", httpd);
    let url = format!(
        "http://{}:{port}/{}",
        rig.lab.server_ip(),
        dense_512.file_name().unwrap().to_string_lossy()
    );
    let t = Instant::now();
    rig.action("rescue", json!({"ssh_keys": [key]}));
    rig.wait_state(&["rescue", "failed"], PHASE_TIMEOUT);
    // The rescue run succeeds once dropbear listens.
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let run = rig.newest_run();
        if run["purpose"] == "rescue" && run["state"] == "succeeded" {
            break;
        }
        assert!(
            run["state"] != "failed" && Instant::now() < deadline,
            "rescue did not come up: {run:#}{}",
            rig.context()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    record(&format!(
        "bios rescue_up={:.1}s mem={SMALL_NODE_MIB}MiB",
        t.elapsed().as_secs_f64()
    ));
    let addr = rig.address();
    let want_sha = test_image::run(Command::new("sha256sum").arg(dense_512))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    // pipefail: a wget that stops early fails the command (busybox dd
    // here prints records, not bytes). The disk is read back and hashed
    // after the timed copy, outside the figure.
    let copy = ssh(
        &rig,
        &key_path,
        &addr,
        &format!(
            "set -o pipefail; read t _ </proc/uptime; echo t0 $t; \
             wget -q -O- {url} | dd of=/dev/vda bs=1M conv=fsync 2>/dev/null; \
             read t _ </proc/uptime; echo t1 $t; \
             head -c {dense_512_size} /dev/vda | sha256sum"
        ),
    );
    assert!(
        copy.contains(&want_sha),
        "the disk does not hold the image after the plain copy: {copy}"
    );
    let plain_secs = guest_secs(&copy);
    let hash = ssh(
        &rig,
        &key_path,
        &addr,
        &format!(
            "set -o pipefail; read t _ </proc/uptime; echo t0 $t; \
             wget -q -O- {url} | sha256sum; \
             read t _ </proc/uptime; echo t1 $t"
        ),
    );
    assert!(hash.contains(&want_sha), "wget|sha256sum: {hash}");
    let hash_secs = guest_secs(&hash);
    let mb = dense_512_size as f64 / 1e6;
    record(&format!(
        "bios plain_copy image=dense-512m mem={SMALL_NODE_MIB}MiB wget|dd={plain_secs:.1}s ({:.1} MB/s) wget|sha256sum={hash_secs:.1}s ({:.1} MB/s)",
        mb / plain_secs,
        mb / hash_secs
    ));
    rig.action("exit-rescue", json!({}));
    rig.wait_state(&["ready"], PHASE_TIMEOUT);
    assert!(
        rig.vm.wait_off(Duration::from_secs(120)),
        "still on after exit-rescue{}",
        rig.context()
    );
    rig.lab.stop("httpd");

    // --- 4. deploy time against image size --------------------------------------
    let mut totals: Vec<(String, f64, f64, f64)> = Vec::new(); // name, to_deployed, write, total
    let mut agent_dense_512: Option<(f64, f64)> = None;
    for ((name, _, _), file) in series.iter().zip(&files) {
        let size = std::fs::metadata(file).unwrap().len();
        let image_name = format!("bench-{name}");
        let (img, import_secs) = rig.import(file, &image_name);
        let d = rig.deploy_and_boot(&image_name, &key);
        let (w_secs, w_cpu, written) = d.write_figures();
        record(&format!(
            "bios image={name} mem={SMALL_NODE_MIB}MiB import={import_secs:.1}s zero_bytes={} {}",
            img["zero_bytes"],
            d.per_step()
        ));
        record(&format!(
            "bios image={name} write_image={w_secs:.2}s ({:.1} MB/s of image, {:.1} MB/s written) \
             written={:.0}MiB cpu={w_cpu:.2}s cpu_per_GB_image={:.2}s cpu_per_GB_written={:.2}s",
            size as f64 / 1e6 / w_secs,
            written / 1e6 / w_secs,
            written / MIB as f64,
            w_cpu / (size as f64 / 1e9),
            if written > 0.0 {
                w_cpu / (written / 1e9)
            } else {
                0.0
            }
        ));
        if *name == "dense-512m" {
            agent_dense_512 = Some((w_secs, w_cpu));
        }
        totals.push((name.to_string(), d.to_deployed, w_secs, d.total));
        record(&format!("bios release={:.1}s", rig.release()));
        // The stored copy is no longer needed; the disk space is.
        let (st, body) = rig
            .anvil
            .request("DELETE", &format!("/images/{image_name}"), None);
        assert!(
            (200..300).contains(&st),
            "delete {image_name}: {st} {body:#}"
        );
        let _ = std::fs::remove_file(file);
    }

    // --- summary -----------------------------------------------------------------
    if let Some((w_secs, _)) = agent_dense_512 {
        record(&format!(
            "summary write_vs_plain image=dense-512m agent={w_secs:.1}s plain={plain_secs:.1}s \
             agent_rate/plain_rate={:.2} (target >= 0.90)",
            plain_secs / w_secs
        ));
    }
    let get = |n: &str| totals.iter().find(|t| t.0 == n).cloned();
    for kind in ["sparse", "dense"] {
        if let (Some(a), Some(b)) = (get(&format!("{kind}-512m")), get(&format!("{kind}-2g"))) {
            record(&format!(
                "summary size_scaling {kind} 512MiB->2GiB: to_deployed {:.1}s->{:.1}s x{:.2}, \
                 write_image {:.1}s->{:.1}s x{:.2}, ready_to_disk_booted {:.1}s->{:.1}s x{:.2} (target <= x4.4)",
                a.1,
                b.1,
                b.1 / a.1,
                a.2,
                b.2,
                b.2 / a.2,
                a.3,
                b.3,
                b.3 / a.3
            ));
        }
    }
    record(&format!(
        "summary bios ready_to_disk_booted(64MiB)={bios_64_total:.1}s (target <= 180s); \
         dense-2g deployed and booted with {SMALL_NODE_MIB} MiB RAM; run {:.0}s; {}",
        started.elapsed().as_secs_f64(),
        host_line()
    ));
}

#[test]
#[ignore = "benchmark: run by scripts/bench/deploy.sh"]
fn deploy_bench_uefi() {
    if e2e::prerequisites(true).is_none() {
        return;
    }
    record(&host_line());
    let scratch = tempfile::tempdir().expect("temp dir");
    let (_, key) = ssh_key(scratch.path());
    let rig = Rig::start("uefi", true);
    record(&format!("uefi commission={:.1}s", rig.commission()));
    let (img, import_secs) = rig.import(
        &test_image::test_image_dir().join("uefi.raw"),
        "bench-uefi-64m",
    );
    assert_eq!(img["firmware"], "uefi", "{img:#}");
    let d = rig.deploy_and_boot("bench-uefi-64m", &key);
    record(&format!(
        "uefi image=64MiB(test image) mem=1024MiB import={import_secs:.1}s {}",
        d.per_step()
    ));
    let (w_secs, w_cpu, _) = d.write_figures();
    record(&format!(
        "uefi image=64MiB write_image={w_secs:.2}s cpu={w_cpu:.2}s"
    ));
    record(&format!(
        "summary uefi ready_to_disk_booted(64MiB)={:.1}s (target <= 240s); {}",
        d.total,
        host_line()
    ));
}
