//! The built ramdisk (`ANVIL_RAMDISK_DIR`, made by scripts/ramdisk/build.sh)
//! booted in QEMU straight from its kernel and initrd, its agent talking to
//! an in-process agent-protocol server on loopback (QEMU's user network
//! maps the guest's 10.0.2.2 to the host's 127.0.0.1). Proves what unit
//! tests on files cannot: the deploy steps on a real kernel and a real
//! virtio disk, with the ramdisk's own resize2fs, efibootmgr and dropbear.
//!
//! - deploy (BIOS and UEFI/OVMF): erase, write_image, grow_root,
//!   cloud_init, boot_entry, then the `reboot` action; the disk is checked
//!   on the host afterwards (sfdisk, e2fsck, dumpe2fs, mtools).
//! - rescue: dropbear answers SSH through a forwarded loopback port.
//! - software RAID 1: raid (the ramdisk's mdadm), raid_sync, then an erase
//!   that stops the assembled array.
//!
//! Skipped (with the reason printed) without `ANVIL_RAMDISK_DIR`, QEMU or
//! the host tools that build and check the test image (sfdisk, e2fsprogs,
//! mkfs.fat, mtools). TCG, about 15 s per VM.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const TOKEN: &str = "qemu-test-token";
const MAC: &str = "52:54:00:de:90:01";
const SERIAL: &str = "ANVIL-QEMU-1";
const DISK_BYTES: u64 = 256 * MIB;
const IMAGE_BYTES: u64 = 64 * MIB;
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const LINUX_TYPE: &str = "0FC63DAF-8483-4772-8e79-3D69D8477DE4";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The ramdisk directory, or why the test cannot run.
fn prerequisites(uefi: bool) -> Result<PathBuf, String> {
    let dir = std::env::var("ANVIL_RAMDISK_DIR")
        .map_err(|_| "ANVIL_RAMDISK_DIR is not set (scripts/test.sh sets it)".to_string())?;
    let dir = PathBuf::from(dir);
    for f in ["vmlinuz", "initrd.img"] {
        if !dir.join(f).is_file() {
            return Err(format!("no {f} in {}", dir.display()));
        }
    }
    for p in [
        "qemu-system-x86_64",
        "sfdisk",
        "mkfs.ext4",
        "mkfs.fat",
        "mcopy",
        "mmd",
        "mtype",
        "e2fsck",
        "dumpe2fs",
        "debugfs",
    ] {
        if !have(p) {
            return Err(format!("{p} is not installed"));
        }
    }
    if uefi && !Path::new(OVMF).is_file() {
        return Err(format!("no {OVMF} (Debian ovmf)"));
    }
    Ok(dir)
}

fn sh(script: &str) {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 64 MiB GPT image as a cloud image has it: an 8 MiB ESP (FAT with
/// `\EFI\BOOT\BOOTX64.EFI`) and an ext4 root filling the rest, holding a
/// file whose content is checked after the root was grown.
fn build_image(dir: &Path) -> PathBuf {
    let img = dir.join("image.raw");
    let root_start = 9 * MIB / 512;
    sh(&format!(
        r#"
        img={img}
        truncate -s {IMAGE_BYTES} "$img"
        printf 'label: gpt\nstart=2048, size=16384, type={ESP_TYPE}, name=ESP\nstart={root_start}, type={LINUX_TYPE}, name=root\n' | sfdisk -q "$img"
        mkfs.fat -n ESP --offset=2048 "$img" 8192 >/dev/null
        printf 'not really a loader' >{dir}/bootx64
        mmd -i "$img@@1M" ::/EFI ::/EFI/BOOT
        mcopy -i "$img@@1M" {dir}/bootx64 ::/EFI/BOOT/BOOTX64.EFI
        root_sectors=$(sfdisk -d "$img" | awk -F'size=' '/name="root"/ {{split($2, a, ","); print a[1] + 0}}')
        mkdir -p {dir}/rootfs/etc
        echo deployed-by-anvil >{dir}/rootfs/etc/motd
        mkfs.ext4 -q -F -d {dir}/rootfs -E offset=$(({root_start} * 512)) "$img" $((root_sectors / 2))k
        "#,
        img = img.display(),
        dir = dir.display(),
    ));
    img
}

/// The zero map (`ANVZMAP1`, 64 KiB blocks) and the NonZeroOnly stream.
fn zero_map_and_stream(raw: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let block = 64 * 1024usize;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (i, chunk) in raw.chunks(block).enumerate() {
        if chunk.iter().all(|&b| b == 0) {
            let start = (i * block) as u64;
            match ranges.last_mut() {
                Some(r) if r.0 + r.1 == start => r.1 += chunk.len() as u64,
                _ => ranges.push((start, chunk.len() as u64)),
            }
        }
    }
    let mut map = b"ANVZMAP1".to_vec();
    for v in [block as u64, raw.len() as u64, ranges.len() as u64] {
        map.extend_from_slice(&v.to_le_bytes());
    }
    let mut stream = Vec::new();
    let mut at = 0usize;
    for &(s, l) in &ranges {
        map.extend_from_slice(&s.to_le_bytes());
        map.extend_from_slice(&l.to_le_bytes());
        stream.extend_from_slice(&raw[at..s as usize]);
        at = (s + l) as usize;
    }
    stream.extend_from_slice(&raw[at..]);
    (map, stream)
}

/// A NoCloud FAT image (16 MiB, label CIDATA) with a meta-data file.
fn build_cidata(dir: &Path) -> Vec<u8> {
    let img = dir.join("cidata.fat");
    sh(&format!(
        r#"
        truncate -s 16M {img}
        mkfs.fat -n CIDATA {img} >/dev/null
        printf 'instance-id: qemu-1\nlocal-hostname: node-qemu\n' >{dir}/meta-data
        mcopy -i {img} {dir}/meta-data ::/meta-data
        "#,
        img = img.display(),
        dir = dir.display()
    ));
    std::fs::read(img).unwrap()
}

/// What the fake Anvil serves and records.
struct Run {
    steps: Vec<Value>,
    /// Final report of each step (by index).
    finished: HashMap<usize, Value>,
    failed: bool,
    reports: Vec<Value>,
    files: HashMap<String, Vec<u8>>,
}

fn read_request(s: &mut TcpStream) -> Option<(String, String, String, Vec<u8>)> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let (mut len, mut auth) = (0usize, String::new());
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
        if lower.starts_with("authorization:") {
            auth = h["authorization:".len()..].trim().to_string();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((method, path, auth, body))
}

fn respond(s: &mut TcpStream, status: &str, body: &[u8]) {
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(body);
}

/// Serves the agent protocol for `run` on 127.0.0.1; returns the port.
fn serve(run: Arc<Mutex<Run>>, final_action: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { break };
            let run = run.clone();
            std::thread::spawn(move || {
                let Some((method, path, auth, body)) = read_request(&mut s) else {
                    return;
                };
                if auth != format!("Bearer {TOKEN}") {
                    return respond(&mut s, "401 Unauthorized", br#"{"type":"about:blank"}"#);
                }
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let mut run = run.lock().unwrap();
                let ok =
                    |s: &mut TcpStream, v: Value| respond(s, "200 OK", v.to_string().as_bytes());
                let current = (0..run.steps.len()).find(|i| !run.finished.contains_key(i));
                let state = if run.failed {
                    "failed"
                } else if current.is_none() {
                    "succeeded"
                } else {
                    "running"
                };
                match (method.as_str(), path.as_str()) {
                    ("POST", "/api/v1/agent/register") => ok(
                        &mut s,
                        json!({
                        "machine_id": "0b0e0000-0000-4000-8000-000000000001", "hostname": "node-qemu",
                        "run_id": "5d1f0000-0000-4000-8000-000000000001", "run_number": 2,
                        "purpose": "deployment", "heartbeat_secs": 10}),
                    ),
                    ("POST", "/api/v1/agent/next") => match (run.failed, current) {
                        (false, Some(i)) => {
                            let step = run.steps[i].clone();
                            ok(&mut s, json!({"step": step}))
                        }
                        (true, _) => ok(&mut s, json!({"action": "done", "run_state": "failed"})),
                        (false, None) => ok(
                            &mut s,
                            json!({"action": final_action, "run_state": "succeeded"}),
                        ),
                    },
                    ("POST", "/api/v1/agent/heartbeat") => {
                        ok(&mut s, json!({"run_state": state, "heartbeat_secs": 10}))
                    }
                    ("POST", p) if p.starts_with("/api/v1/agent/steps/") => {
                        run.reports.push(body.clone());
                        let status = body["status"].as_str().unwrap_or("").to_string();
                        if let Some(i) = current
                            && (status == "succeeded" || status == "failed")
                        {
                            run.finished.insert(i, body.clone());
                            run.failed |= status == "failed";
                        }
                        ok(
                            &mut s,
                            json!({"step_id": p.split('/').nth(5), "seq": body["seq"],
                                          "status": status, "run_state": "running"}),
                        )
                    }
                    ("GET", p) => match run.files.get(p) {
                        Some(b) => {
                            let b = b.clone();
                            drop(run);
                            let _ = write!(
                                s,
                                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                b.len()
                            );
                            let _ = s.write_all(&b);
                        }
                        None => respond(
                            &mut s,
                            "404 Not Found",
                            br#"{"type":"https://anvil.dev/problems/not-found"}"#,
                        ),
                    },
                    _ => respond(
                        &mut s,
                        "404 Not Found",
                        br#"{"type":"https://anvil.dev/problems/not-found"}"#,
                    ),
                }
            });
        }
    });
    port
}

/// TCG guests running at once. Each keeps a host core busy: with all five
/// tests' VMs at once on CI's 2 cores a guest was starved long enough for
/// an RCU stall in its virtio-net poll, and its poweroff never came.
const MAX_PARALLEL_VMS: usize = 2;
static VM_SLOTS: (Mutex<usize>, std::sync::Condvar) = (Mutex::new(0), std::sync::Condvar::new());

/// One of the [`MAX_PARALLEL_VMS`] slots, given back when dropped.
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

struct Qemu {
    child: std::process::Child,
    serial: PathBuf,
    /// Dropped after `Drop for Qemu` killed the VM: the slot is free then.
    _slot: VmSlot,
}

impl Qemu {
    fn start(
        ramdisk: &Path,
        dir: &Path,
        disk: &Path,
        port: u16,
        uefi: bool,
        hostfwd: Option<u16>,
    ) -> Qemu {
        Qemu::start_with(ramdisk, dir, disk, port, uefi, hostfwd, &[])
    }

    /// [`Qemu::start`] with more QEMU arguments (other disks).
    fn start_with(
        ramdisk: &Path,
        dir: &Path,
        disk: &Path,
        port: u16,
        uefi: bool,
        hostfwd: Option<u16>,
        extra: &[String],
    ) -> Qemu {
        let slot = VmSlot::take();
        let serial = dir.join("serial.log");
        let mut cmd = Command::new("qemu-system-x86_64");
        // TCG, as CI has no KVM (and nested KVM hangs this kernel here).
        cmd.args(["-machine", "q35", "-accel", "tcg", "-m", "512", "-smp", "1"])
            .args(["-nographic", "-nodefaults", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-kernel")
            .arg(ramdisk.join("vmlinuz"))
            .arg("-initrd")
            .arg(ramdisk.join("initrd.img"))
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 anvil.url=http://10.0.2.2:{port} anvil.mac={MAC} anvil.token={TOKEN}"
            ))
            .arg("-nic")
            .arg(format!(
                "user,model=virtio-net-pci,mac={MAC}{}",
                hostfwd.map(|p| format!(",hostfwd=tcp:127.0.0.1:{p}-:22")).unwrap_or_default()
            ))
            .arg("-drive")
            .arg(format!("if=none,id=d0,format=raw,file={}", disk.display()))
            .arg("-device")
            .arg(format!("virtio-blk-pci,drive=d0,serial={SERIAL}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if uefi {
            cmd.args(["-bios", OVMF]);
        }
        cmd.args(extra);
        Qemu {
            child: cmd.spawn().unwrap(),
            serial,
            _slot: slot,
        }
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits for QEMU to exit (the agent's reboot with -no-reboot), or
    /// until `give_up` says there is no point (a failed step: the agent
    /// then stays up).
    ///
    /// Once the agent has said it is rebooting or powering off, its work is
    /// on the disk (every step syncs what it wrote; the callers check the
    /// disk afterwards). If the guest kernel then hangs on its way down (seen
    /// once in CI: an RCU stall in virtio-net's TX cleanup under TCG on a
    /// loaded host), QEMU is stopped after [`SHUTDOWN_GRACE`], as an
    /// operator or a BMC would cut the power, and the hang is reported on
    /// stderr rather than failing a test of the agent.
    fn wait_exit(&mut self, limit: Duration, give_up: impl Fn() -> bool) -> Result<(), String> {
        let started = Instant::now();
        let mut said_done: Option<Instant> = None;
        loop {
            if give_up() {
                return Err("a step failed".into());
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                return if st.success() {
                    Ok(())
                } else {
                    Err(format!("QEMU exited {st}"))
                };
            }
            if said_done.is_none() {
                let log = self.log();
                if log.contains("anvil-agent: run succeeded: rebooting")
                    || log.contains("anvil-agent: run succeeded: powering off")
                {
                    said_done = Some(Instant::now());
                }
            }
            if let Some(at) = said_done
                && at.elapsed() > SHUTDOWN_GRACE
            {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!(
                    "WARNING: the agent finished, but the guest kernel did not complete its \
                     reboot/power-off within {} s; QEMU stopped. Console tail:\n{}",
                    SHUTDOWN_GRACE.as_secs(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(format!("QEMU still running after {} s", limit.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// How long a guest may take, after the agent said it is rebooting or
/// powering off, before QEMU is stopped for it (a clean one takes seconds).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

impl Drop for Qemu {
    fn drop(&mut self) {
        // Ours, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn deploy(uefi: bool) {
    let ramdisk = match prerequisites(uefi) {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let image = build_image(dir.path());
    let raw = std::fs::read(&image).unwrap();
    let sha = hex(&Sha256::digest(&raw));
    let (zeromap, stream) = zero_map_and_stream(&raw);
    let cidata = build_cidata(dir.path());
    let cidata_sha = hex(&Sha256::digest(&cidata));
    // The disk: the previous tenant's bytes everywhere.
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, vec![0x5au8; DISK_BYTES as usize]).unwrap();

    let disk_ref = json!({"name": "vda", "size_bytes": DISK_BYTES, "serial": SERIAL});
    let step = |i: u32, kind: &str, params: Value| {
        json!({"id": format!("9a4c0000-0000-4000-8000-00000000000{i}"), "index": i, "kind": kind,
               "params": params, "status": "pending", "last_seq": 0})
    };
    let img_path = format!("/api/v1/agent/images/{sha}");
    let run = Arc::new(Mutex::new(Run {
        steps: Vec::new(),
        finished: HashMap::new(),
        failed: false,
        reports: Vec::new(),
        files: HashMap::from([
            (img_path.clone(), stream.clone()),
            (format!("{img_path}/zeromap"), zeromap),
            ("/api/v1/agent/cloud-init".to_string(), cidata.clone()),
        ]),
    }));
    let port = serve(run.clone(), "reboot");
    let base = format!("http://10.0.2.2:{port}");
    run.lock().unwrap().steps = vec![
        step(0, "erase", json!({"disks": [disk_ref], "mode": "quick"})),
        step(
            1,
            "write_image",
            json!({"disk": disk_ref, "url": format!("{base}{img_path}"),
             "zeromap_url": format!("{base}{img_path}/zeromap"), "sha256": sha, "raw_size": raw.len()}),
        ),
        step(
            2,
            "grow_root",
            json!({"disk": disk_ref, "reserve_end_bytes": 18 * MIB}),
        ),
        step(
            3,
            "cloud_init",
            json!({"disk": disk_ref, "url": format!("{base}/api/v1/agent/cloud-init"),
             "sha256": cidata_sha, "size_bytes": cidata.len(), "label": "CIDATA"}),
        ),
        step(
            4,
            "boot_entry",
            json!({"disk": disk_ref, "firmware": if uefi { "uefi" } else { "bios" },
             "label": "anvil qemu-test"}),
        ),
    ];

    let started = Instant::now();
    let mut vm = Qemu::start(&ramdisk, dir.path(), &disk, port, uefi, None);
    let exited = vm.wait_exit(Duration::from_secs(300), || run.lock().unwrap().failed);
    let log = vm.log();
    let secs = started.elapsed().as_secs_f64();
    let run = run.lock().unwrap();
    let finished: Vec<(usize, Value)> = {
        let mut v: Vec<_> = run.finished.iter().map(|(i, r)| (*i, r.clone())).collect();
        v.sort_by_key(|x| x.0);
        v
    };
    let context = format!("serial console:\n{log}\nfinal reports: {finished:#?}");
    exited.unwrap_or_else(|e| panic!("{e}\n{context}"));
    assert!(!run.failed, "a step failed\n{context}");
    assert_eq!(finished.len(), 5, "{context}");
    assert!(
        log.contains("anvil-agent: run succeeded: rebooting"),
        "{context}"
    );
    eprintln!(
        "{} deploy in QEMU: {secs:.1} s from start to reboot; console timeline:",
        if uefi { "UEFI" } else { "BIOS" }
    );
    for l in log.lines().filter(|l| {
        l.contains("anvil-init: up")
            || l.contains("anvil-agent: registered")
            || l.contains(") started at uptime")
            || l.contains(" succeeded: ")
    }) {
        eprintln!("  {l}");
    }

    let result = |i: usize| &finished[i].1["result"];
    assert_eq!(result(0)["disks"][0]["method"], "quick", "{context}");
    assert_eq!(result(1)["sha256"], sha);
    assert_eq!(
        result(1)["zero_fill"],
        "BlockZeroOut",
        "a real block device"
    );
    // virtio-blk takes O_DIRECT: the image went past the page cache.
    assert_eq!(result(1)["direct_io"], true, "{context}");
    let g = result(2);
    assert_eq!(g["filesystem"], "ext4", "{context}");
    assert_eq!(g["fs_resized"], true, "{context}");
    assert_eq!(g["new_end"], DISK_BYTES - 18 * MIB);
    assert_eq!(result(3)["start"], DISK_BYTES - 17 * MIB);
    let b = result(4);
    if uefi {
        assert_eq!(b["loader"], "\\EFI\\BOOT\\BOOTX64.EFI", "{context}");
        assert_eq!(b["esp_partition"], 1);
        let entry = b["entry"]
            .as_str()
            .unwrap()
            .trim_start_matches("Boot")
            .to_string();
        let order: Vec<&str> = b["boot_order"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let pos = order
            .iter()
            .position(|n| *n == entry)
            .expect("our entry is in BootOrder");
        if b["network_first"] == true {
            assert!(pos > 0, "network entries stay before ours: {order:?}");
        }
    } else {
        assert_eq!(b["firmware"], "bios");
    }

    // On the host: the table, the grown and checked root, the CIDATA data.
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(&disk)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success() && !stderr.to_lowercase().contains("corrupt"),
        "{stderr}"
    );
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = t["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{t}");
    assert_eq!(parts[1]["start"].as_u64().unwrap() * 512, 9 * MIB);
    let root_sectors = parts[1]["size"].as_u64().unwrap();
    assert_eq!(root_sectors * 512, DISK_BYTES - 18 * MIB - 9 * MIB);
    assert_eq!(
        parts[2]["start"].as_u64().unwrap() * 512,
        DISK_BYTES - 17 * MIB
    );
    sh(&format!(
        r#"
        dd if={disk} of={dir}/root.ext4 bs=1M skip=9 count={count} conv=sparse status=none
        e2fsck -fn {dir}/root.ext4 >/dev/null
        blocks=$(dumpe2fs -h {dir}/root.ext4 2>/dev/null | awk -F: '/^Block count/ {{gsub(/ /,"",$2); print $2}}')
        bsize=$(dumpe2fs -h {dir}/root.ext4 2>/dev/null | awk -F: '/^Block size/ {{gsub(/ /,"",$2); print $2}}')
        test $((blocks * bsize)) -eq {root_bytes}
        test "$(debugfs -R 'cat /etc/motd' {dir}/root.ext4 2>/dev/null)" = deployed-by-anvil
        test "$(mtype -i {disk}@@{cidata_at} ::/meta-data | head -1)" = "instance-id: qemu-1"
        "#,
        disk = disk.display(),
        dir = dir.path().display(),
        count = root_sectors * 512 / MIB,
        root_bytes = root_sectors * 512,
        cidata_at = DISK_BYTES - 17 * MIB,
    ));
}

#[test]
fn deploy_in_qemu_bios() {
    deploy(false);
}

#[test]
fn deploy_in_qemu_uefi() {
    deploy(true);
}

#[test]
fn rescue_in_qemu_answers_ssh() {
    let ramdisk = match prerequisites(false) {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, vec![0u8; (16 * MIB) as usize]).unwrap();
    // The operator's key: a real one when ssh-keygen is there, so the test
    // can log in with it (openssh-client); else a well-formed stand-in.
    let key = dir.path().join("id_ed25519");
    let login = have("ssh-keygen")
        && have("ssh")
        && Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "op@desk", "-f"])
            .arg(&key)
            .status()
            .is_ok_and(|s| s.success());
    let public = if login {
        std::fs::read_to_string(key.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string()
    } else {
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5 op@desk".to_string()
    };
    let run = Arc::new(Mutex::new(Run {
        steps: vec![
            json!({"id": "9a4c0000-0000-4000-8000-0000000000aa", "index": 0, "kind": "rescue",
            "params": {"ssh_keys": [public]},
            "status": "pending", "last_seq": 0}),
        ],
        finished: HashMap::new(),
        failed: false,
        reports: Vec::new(),
        files: HashMap::new(),
    }));
    let port = serve(run.clone(), "done");
    let fwd = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let vm = Qemu::start(&ramdisk, dir.path(), &disk, port, false, Some(fwd));
    let started = Instant::now();
    loop {
        let log = vm.log();
        if log.contains("run succeeded: done") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300) && !run.lock().unwrap().failed,
            "rescue did not finish:\n{log}\n{:#?}",
            run.lock().unwrap().finished
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = run.lock().unwrap().finished[&0].clone();
    assert_eq!(r["status"], "succeeded", "{r}");
    assert!(
        r["result"]["host_key"]
            .as_str()
            .unwrap()
            .starts_with("ssh-ed25519 ")
    );
    // From the host, through QEMU's forward to the guest's port 22.
    let mut s = TcpStream::connect(("127.0.0.1", fwd)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut b = [0u8; 64];
    let n = s.read(&mut b).unwrap();
    let banner = String::from_utf8_lossy(&b[..n]);
    assert!(
        banner.starts_with("SSH-2.0-dropbear"),
        "{banner:?}\n{}",
        vm.log()
    );
    eprintln!(
        "rescue in QEMU: SSH answered {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    if !login {
        eprintln!("no ssh/ssh-keygen: not logging in");
        return;
    }
    // root logs in with the key and runs a command in the rescue system.
    let out = Command::new("ssh")
        .arg("-i")
        .arg(&key)
        .args([
            "-p",
            &fwd.to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=30",
            "root@127.0.0.1",
            "cat /proc/cmdline; id -u",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("anvil.token=") && stdout.trim_end().ends_with('0'),
        "ssh: {}\n{stdout}{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        vm.log()
    );
    eprintln!("rescue in QEMU: logged in as root with the key");
}

/// A release: `erase` quick over a disk holding a deployed image (its GPT,
/// ESP and ext4 root) and the previous tenant's data; the final action
/// `poweroff` ends QEMU. Afterwards the disk's first and last MiB and each
/// old partition's edges read as zeros, no partition table is left, and
/// the data between is untouched (a quick erase is quick).
#[test]
fn release_in_qemu_erases_tables_and_signatures() {
    let ramdisk = match prerequisites(false) {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let image = std::fs::read(build_image(dir.path())).unwrap();
    let disk_bytes = 128 * MIB;
    let mut bytes = vec![0x5au8; disk_bytes as usize];
    bytes[..image.len()].copy_from_slice(&image);
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, &bytes).unwrap();
    let run = Arc::new(Mutex::new(Run {
        steps: vec![
            json!({"id": "9a4c0000-0000-4000-8000-0000000000e0", "index": 0, "kind": "erase",
            "params": {"disks": [{"name": "vda", "size_bytes": disk_bytes, "serial": SERIAL}],
                       "mode": "quick", "allow_overwrite": false},
            "status": "pending", "last_seq": 0}),
        ],
        finished: HashMap::new(),
        failed: false,
        reports: Vec::new(),
        files: HashMap::new(),
    }));
    let port = serve(run.clone(), "poweroff");
    let mut vm = Qemu::start(&ramdisk, dir.path(), &disk, port, false, None);
    let exited = vm.wait_exit(Duration::from_secs(300), || run.lock().unwrap().failed);
    let log = vm.log();
    let run = run.lock().unwrap();
    exited.unwrap_or_else(|e| panic!("{e}\n{log}\n{:#?}", run.finished));
    assert!(
        log.contains("anvil-agent: run succeeded: powering off"),
        "{log}"
    );
    let r = &run.finished[&0]["result"]["disks"][0];
    assert_eq!(r["method"], "quick");
    assert_eq!(r["table"], "gpt");
    assert_eq!(r["partitions"], 2);
    let after = std::fs::read(&disk).unwrap();
    let zero = |s: u64, e: u64| after[s as usize..e as usize].iter().all(|&b| b == 0);
    assert!(zero(0, 2 * MIB), "disk start and the ESP's first MiB");
    assert!(zero(disk_bytes - MIB, disk_bytes), "disk end");
    assert!(
        zero(9 * MIB, 10 * MIB),
        "the root's first MiB (ext4 superblock)"
    );
    assert!(
        zero(IMAGE_BYTES - 34 * 512 - MIB + 512, IMAGE_BYTES - 34 * 512),
        "the root's last MiB"
    );
    assert!(
        after[(20 * MIB) as usize..(30 * MIB) as usize]
            == bytes[(20 * MIB) as usize..(30 * MIB) as usize]
    );
    assert!(
        after[(70 * MIB) as usize..(120 * MIB) as usize]
            .iter()
            .all(|&b| b == 0x5a)
    );
    let out = Command::new("sfdisk")
        .arg("-d")
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "sfdisk still finds a table: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Benchmark (run by hand: `cargo test -p anvil-agent --test ramdisk_qemu
/// -- --ignored --nocapture`): the agent's verified streaming write of a
/// dense 256 MiB image against `wget -O- URL | dd` of the same raw bytes in
/// the same VM (through the rescue SSH server), and the agent's CPU time
/// (PID 1's utime + stime) per GB. TCG: absolute rates are the emulator's.
#[test]
#[ignore]
fn bench_write_rate_against_wget_dd_in_qemu() {
    let ramdisk = match prerequisites(false) {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    if !have("ssh-keygen") || !have("ssh") {
        eprintln!("skipped: needs ssh and ssh-keygen");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 256 * MIB;
    let raw: Vec<u8> = {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8 | 1
            })
            .collect()
    };
    let sha = hex(&Sha256::digest(&raw));
    let (zeromap, stream) = zero_map_and_stream(&raw);
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(512 * MIB)
        .unwrap();
    let key = dir.path().join("id_ed25519");
    assert!(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap()
            .success()
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let img_path = format!("/api/v1/agent/images/{sha}");
    let run = Arc::new(Mutex::new(Run {
        steps: Vec::new(),
        finished: HashMap::new(),
        failed: false,
        reports: Vec::new(),
        files: HashMap::from([
            (img_path.clone(), stream),
            (format!("{img_path}/zeromap"), zeromap),
            ("/raw".to_string(), raw.clone()),
        ]),
    }));
    let port = serve(run.clone(), "done");
    let base = format!("http://10.0.2.2:{port}");
    let disk_ref = json!({"name": "vda", "size_bytes": 512 * MIB, "serial": SERIAL});
    run.lock().unwrap().steps = vec![
        json!({"id": "9a4c0000-0000-4000-8000-0000000000b1", "index": 0, "kind": "write_image",
               "status": "pending", "last_seq": 0,
               "params": {"disk": disk_ref, "url": format!("{base}{img_path}"),
                          "zeromap_url": format!("{base}{img_path}/zeromap"), "sha256": sha, "raw_size": size}}),
        json!({"id": "9a4c0000-0000-4000-8000-0000000000b2", "index": 1, "kind": "rescue",
               "status": "pending", "last_seq": 0, "params": {"ssh_keys": [public.trim()]}}),
    ];
    let fwd = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let vm = Qemu::start(&ramdisk, dir.path(), &disk, port, false, Some(fwd));
    let started = Instant::now();
    while !vm.log().contains("run succeeded: done") {
        assert!(
            started.elapsed() < Duration::from_secs(900) && !run.lock().unwrap().failed,
            "{}",
            vm.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let agent_secs = run.lock().unwrap().finished[&0]["result"]["elapsed_secs"]
        .as_f64()
        .unwrap();
    let ssh = |cmd: &str| {
        let out = Command::new("ssh")
            .arg("-i")
            .arg(&key)
            .args([
                "-p",
                &fwd.to_string(),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "BatchMode=yes", "root@127.0.0.1", cmd])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // PID 1's CPU time in clock ticks (USER_HZ = 100), fields 14 and 15.
    let stat = ssh("cat /proc/1/stat");
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let agent_cpu = (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0;
    let out = ssh(&format!(
        "s=$(cut -d' ' -f1 /proc/uptime); wget -q -O- http://10.0.2.2:{port}/raw --header 'Authorization: Bearer {TOKEN}' | dd of=/dev/vda bs=1M 2>/dev/null; sync; e=$(cut -d' ' -f1 /proc/uptime); echo $s $e"
    ));
    let t: Vec<f64> = out.split_whitespace().map(|v| v.parse().unwrap()).collect();
    let plain_secs = t[1] - t[0];
    let gb = size as f64 / 1e9;
    eprintln!(
        "write_image {:.1} MB/s ({agent_secs:.1} s, sha256 verified) vs wget|dd {:.1} MB/s ({plain_secs:.1} s): {:.2}x; agent CPU {agent_cpu:.1} s for the whole boot = {:.1} core-s per GB",
        size as f64 / 1e6 / agent_secs,
        size as f64 / 1e6 / plain_secs,
        plain_secs / agent_secs,
        agent_cpu / gb
    );
}

/// A secure release on the disks QEMU can emulate: an NVMe namespace gets
/// Format NVM with Secure Erase Setting 1 through the agent's admin ioctl
/// (QEMU's controller zeroes the namespace), and a SATA disk on AHCI, which
/// has no ATA security feature set in QEMU, is refused by `hdparm -I`'s
/// answer (before any disk is erased) and, with `allow_overwrite`,
/// overwritten with zeros.
#[test]
fn secure_erase_in_qemu_nvme_format_and_sata_overwrite() {
    let ramdisk = match prerequisites(false) {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let (boot, nvme, sata) = (
        dir.path().join("boot.raw"),
        dir.path().join("nvme.raw"),
        dir.path().join("sata.raw"),
    );
    std::fs::write(&boot, vec![0x11u8; (16 * MIB) as usize]).unwrap();
    std::fs::write(&nvme, vec![0x5au8; size as usize]).unwrap();
    std::fs::write(&sata, vec![0xa5u8; size as usize]).unwrap();
    let extra: Vec<String> = [
        "-drive".to_string(),
        format!("if=none,id=n0,format=raw,file={}", nvme.display()),
        "-device".into(),
        "nvme,serial=NVME-ERASE-1,drive=n0".into(),
        "-device".into(),
        "ahci,id=ahci0".into(),
        "-drive".into(),
        format!("if=none,id=s0,format=raw,file={}", sata.display()),
        "-device".into(),
        "ide-hd,bus=ahci0.0,drive=s0,serial=SATA-ERASE-1".into(),
    ]
    .into();
    let params = |allow: bool| {
        json!({"disks": [{"name": "nvme0n1", "size_bytes": size, "serial": "NVME-ERASE-1"},
                         {"name": "sda", "size_bytes": size}],
               "mode": "secure", "allow_overwrite": allow})
    };
    // First without allow_overwrite: the SATA disk cannot be erased.
    for allow in [false, true] {
        let run = Arc::new(Mutex::new(Run {
            steps: vec![
                json!({"id": "9a4c0000-0000-4000-8000-0000000000c0", "index": 0,
                "kind": "erase", "params": params(allow), "status": "pending", "last_seq": 0}),
            ],
            finished: HashMap::new(),
            failed: false,
            reports: Vec::new(),
            files: HashMap::new(),
        }));
        let port = serve(run.clone(), "poweroff");
        let mut vm = Qemu::start_with(&ramdisk, dir.path(), &boot, port, false, None, &extra);
        let exited = vm.wait_exit(Duration::from_secs(300), || run.lock().unwrap().failed);
        let log = vm.log();
        let run = run.lock().unwrap();
        let fin = run.finished.get(&0).cloned().unwrap_or(Value::Null);
        if allow {
            exited.unwrap_or_else(|e| panic!("{e}\n{log}\n{fin:#}"));
            let disks = &fin["result"]["disks"];
            assert_eq!(disks[0]["method"], "nvme-format", "{fin:#}");
            assert_eq!(disks[1]["method"], "overwrite", "{fin:#}");
            assert!(
                std::fs::read(&nvme).unwrap().iter().all(|&b| b == 0),
                "NVMe namespace zeroed"
            );
            assert!(
                std::fs::read(&sata).unwrap().iter().all(|&b| b == 0),
                "SATA disk overwritten"
            );
        } else {
            assert_eq!(fin["status"], "failed", "{fin:#}\n{log}");
            let msg = fin["message"].as_str().unwrap();
            assert!(
                msg.contains("sda") && msg.contains("allow_overwrite"),
                "{msg}"
            );
            // Refused before anything was erased: the NVMe disk, listed
            // first, is untouched too.
            assert!(std::fs::read(&nvme).unwrap().iter().all(|&b| b == 0x5a));
            assert!(std::fs::read(&sata).unwrap().iter().all(|&b| b == 0xa5));
        }
    }
}

/// Software RAID 1 on a real kernel with the ramdisk's mdadm, in one boot:
/// `raid` over two virtio disks holding different old data, `raid_sync`
/// until the resync is done, then a release's `erase`, which must stop the
/// assembled array before it can open the members. Afterwards, on the
/// host: the members are identical where they differed (the resync ran),
/// and their first and last MiB are zeros, so no md superblock is left.
#[test]
fn raid1_in_qemu_builds_resyncs_and_erase_stops_the_array() {
    let ramdisk = match prerequisites(false) {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    if !have("mdadm") {
        eprintln!("skipped: no mdadm on the host (Debian mdadm; scripts/test.sh installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Large enough that the resync outlasts the raid step's report, so
    // raid_sync really waits; sparse, with different old data at a few
    // places on each disk.
    let size = 512 * MIB;
    let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    let marked = [8 * MIB, 200 * MIB, 500 * MIB];
    for (path, byte) in [(&a, 0x5au8), (&b, 0xa5u8)] {
        let mut f = std::fs::File::create(path).unwrap();
        f.set_len(size).unwrap();
        for off in marked {
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(off)).unwrap();
            f.write_all(&vec![byte; (4 * MIB) as usize]).unwrap();
        }
    }
    let extra: Vec<String> = [
        "-drive".to_string(),
        format!("if=none,id=d1,format=raw,file={}", b.display()),
        "-device".into(),
        "virtio-blk-pci,drive=d1,serial=ANVIL-QEMU-2".into(),
    ]
    .into();
    let disks = json!([{"name": "vda", "size_bytes": size, "serial": SERIAL},
                       {"name": "vdb", "size_bytes": size, "serial": "ANVIL-QEMU-2"}]);
    let run = Arc::new(Mutex::new(Run {
        steps: vec![
            json!({"id": "9a4c0000-0000-4000-8000-0000000000d0", "index": 0, "kind": "raid",
                   "params": {"level": 1, "disks": disks, "name": "anvil-root"},
                   "status": "pending", "last_seq": 0}),
            json!({"id": "9a4c0000-0000-4000-8000-0000000000d1", "index": 1, "kind": "raid_sync",
                   "params": {"disk": disks[0]}, "status": "pending", "last_seq": 0}),
            json!({"id": "9a4c0000-0000-4000-8000-0000000000d2", "index": 2, "kind": "erase",
                   "params": {"disks": disks, "mode": "quick", "allow_overwrite": false},
                   "status": "pending", "last_seq": 0}),
        ],
        finished: HashMap::new(),
        failed: false,
        reports: Vec::new(),
        files: HashMap::new(),
    }));
    let port = serve(run.clone(), "poweroff");
    let started = Instant::now();
    let mut vm = Qemu::start_with(&ramdisk, dir.path(), &a, port, false, None, &extra);
    let exited = vm.wait_exit(Duration::from_secs(300), || run.lock().unwrap().failed);
    let log = vm.log();
    let run = run.lock().unwrap();
    exited.unwrap_or_else(|e| panic!("{e}\n{log}\n{:#?}", run.finished));
    let raid = &run.finished[&0]["result"];
    assert_eq!(raid["metadata"], "1.0", "{raid:#}");
    assert_eq!(raid["members"], json!(["vda", "vdb"]), "{raid:#}");
    let array = raid["array"].as_str().expect("array").to_string();
    let sync = &run.finished[&1];
    assert_eq!(sync["status"], "succeeded", "{sync:#}\n{log}");
    assert_eq!(sync["result"]["degraded"], 0, "{sync:#}");
    // The kernel resyncs at most at speed_limit_max (200 MB/s by default):
    // 512 MiB take at least 2.7 s, most of which raid_sync waits.
    assert!(
        sync["result"]["waited_secs"].as_f64().unwrap_or(0.0) > 0.5,
        "raid_sync did not wait for the resync: {sync:#}"
    );
    let erase = &run.finished[&2]["result"]["disks"];
    for d in erase.as_array().unwrap() {
        assert_eq!(d["method"], "quick", "{erase:#}");
    }
    // The first member's erase stopped the array (the second found none).
    assert_eq!(
        erase[0]["stopped_arrays"],
        json!([array]),
        "{erase:#}\n{log}"
    );
    let read = |path: &Path, off: u64, len: u64| {
        use std::io::Seek;
        let mut f = std::fs::File::open(path).unwrap();
        f.seek(std::io::SeekFrom::Start(off)).unwrap();
        let mut v = vec![0u8; len as usize];
        f.read_exact(&mut v).unwrap();
        v
    };
    for off in marked {
        let (x, y) = (read(&a, off, 4 * MIB), read(&b, off, 4 * MIB));
        assert!(x == y, "the members still differ at {off}: no resync");
        assert!(
            x.iter().all(|&v| v == 0x5a),
            "vda's data was copied at {off}"
        );
    }
    for (name, path) in [("vda", &a), ("vdb", &b)] {
        assert!(
            read(path, 0, MIB).iter().all(|&x| x == 0),
            "{name}: first MiB"
        );
        assert!(
            read(path, size - MIB, MIB).iter().all(|&x| x == 0),
            "{name}: last MiB (the 1.0 superblock)"
        );
    }
    let progress = run
        .reports
        .iter()
        .filter(|r| {
            r["status"] == "progress"
                && r["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("raid_sync"))
        })
        .count();
    for f in [&a, &b] {
        let o = Command::new("mdadm")
            .arg("--examine")
            .arg(f)
            .output()
            .unwrap();
        assert!(!o.status.success(), "md superblock left on {}", f.display());
    }
    eprintln!(
        "raid1 in qemu: 2 x {} MiB, raid_sync waited {:.1} s ({progress} progress reports), whole boot {:.1} s",
        size / MIB,
        sync["result"]["waited_secs"].as_f64().unwrap_or(f64::NAN),
        started.elapsed().as_secs_f64()
    );
}
