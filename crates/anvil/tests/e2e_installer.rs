//! End to end, installer deploy: the real Debian 12 installer (the netboot
//! kernel and initrd of Debian's `debian-installer-12-netboot-amd64`)
//! network-boots a QEMU machine (TCG, BIOS with the e1000 iPXE ROM) from
//! Anvil's DHCP, TFTP and HTTP, with Anvil's built-in iPXE script and
//! preseed, up to the mirror. A full install cannot run here (no Debian
//! mirror in the test network, and it would take far too long in TCG), so
//! the test stops at the first thing only the preseed can cause: the
//! installer asks the mirror named in the preseed (its own host on the lab's
//! wire, a Python HTTP server that logs every request and has nothing to
//! serve) for `/debian/dists/…`. That host, port and directory appear
//! nowhere but in the preseed Anvil rendered for this boot, so the request
//! proves the installer booted from Anvil's script, fetched Anvil's preseed
//! over the per-boot token URL, had every question before the mirror answered
//! by Anvil's kernel command line and preseed (priority critical: any
//! question shown, `[!!]` on the console, fails the test) and applied the
//! preseed's mirror settings. Anvil records no fetch of an answer file, so
//! that request is the evidence of the preseed fetch too.
//!
//! The machine reaches `ready` through the real API, the commissioning agent's
//! calls made by the test (as `installer.rs` does): the VM has no disk, and
//! the installer never gets as far as partitioning.
//!
//! Needs root, the packages of `e2e::prerequisites`, `python3` and
//! `debian-installer-12-netboot-amd64` (skipped, saying so, without the
//! latter); `ANVIL_SKIP_VM_TESTS=1` skips it. The timing goes to stdout and
//! target/e2e-boot/timings.txt.

#[path = "e2e/commission_lab.rs"]
mod commission_lab;
mod common;
mod e2e;

use e2e::{Anvil, Lab};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where `debian-installer-12-netboot-amd64` puts the text-mode netboot
/// installer.
const DI_DIR: &str = "/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64";
const DI_PACKAGE: &str = "debian-installer-12-netboot-amd64";
/// QEMU start to the installer's first mirror request. Measured at 78 s on
/// the 2-core machine (TCG: iPXE's script at 18 s, the installer kernel at
/// 21 s, DHCP and IPv6 autoconfiguration in the installer, the preseed, the
/// mirror); three times that leaves room for a busy one.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(240);
const MIRROR_PORT: u16 = 8000;
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGRlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn+AgYKD e2e@anvil";
const GIB: u64 = 1 << 30;
const HOSTNAME: &str = "di-e2e";

/// Serial-console texts after which the installer cannot reach the mirror:
/// the test fails at once instead of at the timeout.
const FAILURES: &[(&str, &str)] = &[
    (
        "boot failed, retrying",
        "iPXE could not load the installer kernel or initrd Anvil's script named",
    ),
    ("Kernel panic", "the installer kernel panicked"),
    (
        "booting from disk",
        "Anvil served the local-disk script instead of the installer",
    ),
    (
        "Failed to retrieve the preconfiguration file",
        "the installer could not fetch Anvil's preseed",
    ),
    (
        "Failed to process the preconfiguration file",
        "the installer rejected Anvil's preseed",
    ),
    (
        "Entering low memory mode",
        "the VM has too little RAM for the installer, which stops at its low-memory note",
    ),
    (
        "[!!]",
        "the installer asked a question at priority critical that neither Anvil's kernel \
         command line nor its preseed answered",
    ),
];

/// The VM's RAM: with `e2e::Vm`'s 512 MiB the Debian 12 installer enters
/// its low-memory mode and waits at a note, even at priority critical.
const VM_MIB: &str = "1024";

/// Starts QEMU as `e2e::Vm::start` does for `Firmware::BiosIpxeRom` (TCG,
/// q35, SeaBIOS with the e1000 iPXE ROM, network boot only, serial console
/// to `<dir>/<name>.serial`, killed by PID with the lab), with [`VM_MIB`] of
/// RAM. Returns the serial log's path and the start time.
fn start_vm(lab: &Lab, name: &str, mac: &str) -> (PathBuf, Instant) {
    let tap = lab.add_tap();
    let serial = lab.dir.join(format!("{name}.serial"));
    let mut cmd = Lab::command_in(&lab.ns, "qemu-system-x86_64");
    cmd.args([
        "-machine", "q35", "-accel", "tcg", "-m", VM_MIB, "-smp", "1",
    ])
    .args(["-nographic", "-nodefaults", "-monitor", "none"])
    .args(["-no-reboot", "-boot", "n"])
    .arg("-serial")
    .arg(format!("file:{}", serial.display()))
    .arg("-netdev")
    .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
    .arg("-device")
    .arg(format!("e1000,netdev=n0,mac={mac},autonegotiation=off"));
    let started = Instant::now();
    lab.spawn(name, cmd);
    (serial, started)
}

/// The lab's network boot, with a name server in the DHCP answer as a
/// site's DHCP has (`dns`), or without one. Without one, the installer's
/// netcfg asks for name servers at priority critical before it fetches the
/// preseed (which therefore cannot answer it); Anvil's script answers it on
/// the kernel command line. Nothing answers DNS in the lab; the mirror is an
/// address, so the installer needs none.
fn lab_toml(lab: &Lab, dns: bool) -> String {
    let toml = commission_lab::network_boot_toml(lab, "e2e");
    let lease = "lease_time_secs = 3600\n";
    assert!(toml.contains(lease), "{toml}");
    if !dns {
        assert!(!toml.contains("dns"), "{toml}");
        return toml;
    }
    toml.replacen(
        lease,
        &format!("{lease}dns = [\"{}\"]\n", lab.server_ip()),
        1,
    )
}

/// Starts `python3 -m http.server` in a host namespace of its own on the
/// lab's wire at `addr`, serving an empty directory: every request is a 404,
/// logged as `<client> - - [date] "GET <path> HTTP/1.1" 404 -`.
fn start_mirror(lab: &Lab, addr: &str) {
    let hns = lab.add_host("mirror", "52:54:00:99:00:02", Some(addr));
    let root = lab.dir.join("mirror-root");
    std::fs::create_dir_all(&root).unwrap();
    let mut cmd = Lab::command_in(&hns, "python3");
    cmd.args(["-u", "-m", "http.server", "--bind", addr, "--directory"])
        .arg(&root)
        .arg(MIRROR_PORT.to_string());
    lab.spawn("mirror", cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lab.log("mirror").contains("Serving HTTP on") {
        if let Some(st) = lab.exited("mirror") {
            panic!(
                "the mirror's http.server exited ({st}):\n{}",
                lab.log("mirror")
            );
        }
        assert!(
            Instant::now() < deadline,
            "the mirror's http.server did not start:\n{}",
            lab.log("mirror")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The mirror's logged requests under `/debian/dists/`: (client, path).
fn mirror_dists_requests(lab: &Lab) -> Vec<(String, String)> {
    lab.log("mirror")
        .lines()
        .filter_map(|l| {
            let client = l.split_whitespace().next()?;
            let path = l.split("\"GET ").nth(1)?.split_whitespace().next()?;
            path.starts_with("/debian/dists/")
                .then(|| (client.to_string(), path.to_string()))
        })
        .collect()
}

/// The line of `script` that starts with `prefix`.
fn line<'a>(script: &'a str, prefix: &str) -> &'a str {
    script
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {script}"))
}

/// Creates the machine and takes it to `ready` with one 8 GiB disk through
/// the real API: the commission action, then the commissioning agent's
/// calls (register, inventory step, facts) with the agent token of its iPXE
/// script, as `installer.rs` does. Returns the machine's id.
fn ready_machine(anvil: &Anvil, mac: &str) -> String {
    let (st, m) = anvil.request(
        "POST",
        "/machines",
        Some(json!({"hostname": HOSTNAME, "interfaces": [{"mac": mac, "pxe": true}]})),
    );
    assert_eq!(st, 201, "create machine: {m:#}");
    let id = m["id"].as_str().expect("machine id").to_string();
    let (st, v) = anvil.request(
        "POST",
        &format!("/machines/{id}/actions/commission"),
        Some(json!({})),
    );
    assert_eq!(st, 202, "commission: {v:#}");
    let (st, script) = anvil.request("GET", &format!("/boot/{mac}.ipxe"), None);
    assert_eq!(st, 200, "{script}");
    let script = script.as_str().unwrap_or_default().to_string();
    let token = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("anvil.token="))
        .unwrap_or_else(|| panic!("no agent token in the commissioning script:\n{script}"))
        .to_string();
    // The same server, called with the agent's token instead of the admin's.
    let agent = Anvil {
        url: anvil.url.clone(),
        data_dir: anvil.data_dir.clone(),
        token,
        ns: anvil.ns.clone(),
        pid: anvil.pid,
    };
    let (st, v) = agent.request(
        "POST",
        "/agent/register",
        Some(json!({"mac": mac, "agent_version": "0.1.0"})),
    );
    assert_eq!(st, 200, "agent register: {v:#}");
    let (st, next) = agent.request("POST", "/agent/next", None);
    assert_eq!(st, 200, "agent next: {next:#}");
    let step = next["step"]["id"].as_str().expect("a step").to_string();
    assert_eq!(next["step"]["kind"], "inventory", "{next:#}");
    let report = |seq: u32, status: &str| {
        let (st, v) = agent.request(
            "POST",
            &format!("/agent/steps/{step}/report"),
            Some(json!({"seq": seq, "status": status})),
        );
        assert!((200..300).contains(&st), "report {status}: {v:#}");
    };
    report(1, "started");
    let facts = json!({
        "schema_version": 1,
        "cpu": {"model": "QEMU Virtual CPU", "vendor": "GenuineIntel", "sockets": 1, "cores": 1, "threads": 1, "flags": []},
        "memory": {"total_bytes": GIB / 2, "dimms": []},
        "disks": [{"name": "vda", "serial": "DI-E2E-1", "size_bytes": 8 * GIB, "transport": "virtio", "removable": false}],
        "nics": [{"name": "ens3", "mac": mac, "driver": "e1000", "link_up": true}],
        "dmi": {"system_vendor": "Anvil Labs"},
        "boot": {"mode": "bios"},
    });
    let (st, v) = agent.request(
        "POST",
        "/agent/facts",
        Some(json!({"step_id": step, "facts": facts})),
    );
    assert_eq!(st, 200, "agent facts: {v:#}");
    report(2, "succeeded");
    anvil.wait_for("the machine to be ready", Duration::from_secs(60), |a| {
        (a.get(&format!("/machines/{id}"))["state"] == "ready").then_some(())
    });
    id
}

#[test]
fn debian_installer_boots_from_anvil_and_follows_its_preseed_to_the_mirror() {
    installer_to_the_mirror(true);
}

/// A boot network whose DHCP offers no name server: the installer must not
/// stop to ask for one.
#[test]
fn debian_installer_goes_on_without_a_name_server_from_dhcp() {
    installer_to_the_mirror(false);
}

fn installer_to_the_mirror(dns: bool) {
    if e2e::prerequisites(false).is_none() {
        return;
    }
    let (kernel, initrd) = (format!("{DI_DIR}/linux"), format!("{DI_DIR}/initrd.gz"));
    if !Path::new(&kernel).is_file() || !Path::new(&initrd).is_file() {
        eprintln!(
            "SKIPPED: the Debian installer is not installed ({kernel}, {initrd}): \
             apt-get install -y {DI_PACKAGE} (scripts/test.sh does)"
        );
        return;
    }
    let t0 = Instant::now();
    let lab = Lab::new();
    let anvil = Anvil::start(&lab, &lab_toml(&lab, dns));
    let mirror_ip = lab.addr(10);
    start_mirror(&lab, &mirror_ip);

    let (st, img) = anvil.request(
        "POST",
        "/images",
        Some(json!({
            "kind": "installer", "name": "debian-12-netboot", "os": "debian", "release": "12",
            "kernel_path": kernel, "initrd_path": initrd,
            "repo_url": format!("http://{mirror_ip}:{MIRROR_PORT}/debian"),
        })),
    );
    assert_eq!(st, 201, "register the installer image: {img:#}");

    let mac = lab.mac(1);
    let id = ready_machine(&anvil, &mac);
    let (st, job) = anvil.request(
        "POST",
        &format!("/machines/{id}/actions/deploy"),
        Some(json!({"image": "debian-12-netboot", "ssh_keys": [SSH_KEY], "root_disk": "largest"})),
    );
    assert_eq!(st, 202, "deploy: {job:#}");
    assert_eq!(anvil.get(&format!("/machines/{id}"))["state"], "deploying");

    // What the VM will be given (each fetch mints its own token).
    let (st, script) = anvil.request("GET", &format!("/boot/{mac}.ipxe"), None);
    assert_eq!(st, 200, "{script}");
    let script = script.as_str().unwrap_or_default().to_string();
    let kernel_line = line(&script, "kernel ");
    for a in [
        "auto=true",
        "priority=critical",
        "console=ttyS0,115200",
        "netcfg/get_nameservers=",
    ] {
        assert!(
            kernel_line.split_whitespace().any(|w| w == a),
            "{a}: {kernel_line}"
        );
    }
    let preseed_url = kernel_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("url="))
        .unwrap_or_else(|| panic!("no url= in {kernel_line}"));
    assert!(
        preseed_url.starts_with(&format!("{}/api/v1/installer/", anvil.url))
            && preseed_url.ends_with("/preseed.cfg"),
        "{preseed_url}"
    );
    let img_id = img["id"].as_str().unwrap();
    assert!(
        kernel_line.contains(&format!("/boot/files/installer/{img_id}/vmlinuz")),
        "{kernel_line}"
    );

    let vm = "vm1";
    let (serial_path, started) = start_vm(&lab, vm, &mac);
    let mut seen: Vec<(&str, Duration)> = Vec::new();
    let requests = loop {
        let serial = e2e::read_lossy(&serial_path);
        let at = started.elapsed();
        for (name, text) in [
            ("ipxe_script", "Anvil: installing"),
            ("kernel_start", "Linux version"),
            ("installer_dhcp", "Configuring the network with DHCP"),
            ("mirror_check", "Checking the Debian archive mirror"),
        ] {
            if !seen.iter().any(|(n, _)| *n == name) && serial.contains(text) {
                seen.push((name, at));
            }
        }
        let requests = mirror_dists_requests(&lab);
        if !requests.is_empty() {
            seen.push(("mirror_request", at));
            break requests;
        }
        let why = if let Some((text, what)) = FAILURES.iter().find(|(t, _)| serial.contains(t)) {
            Some(format!("{what} (serial console: {text:?})"))
        } else if let Some(st) = lab.exited(vm) {
            Some(format!("QEMU exited ({st})"))
        } else if at > MIRROR_TIMEOUT {
            Some(format!(
                "no request under /debian/dists/ at the mirror within {} s",
                MIRROR_TIMEOUT.as_secs()
            ))
        } else {
            None
        };
        if let Some(why) = why {
            panic!(
                "VM {vm} ({mac}): {why}\n===== serial console =====\n{}\n===== logs ====={}",
                e2e::printable(&serial),
                lab.log_tails()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let to_mirror = started.elapsed();

    // The request came from the VM: from an address Anvil leased to its MAC.
    let leased: Vec<String> = anvil
        .leases(&mac)
        .iter()
        .filter_map(|l| l["address"].as_str().map(str::to_string))
        .collect();
    assert!(
        requests.iter().any(|(client, _)| leased.contains(client)),
        "mirror requests {requests:?} are not from the VM's leased addresses {leased:?}\n{}",
        lab.log("mirror")
    );
    // The installer's kernel and initrd came from Anvil, for this machine
    // (boot events are written in batches: wait for them).
    let wanted: Vec<String> = ["vmlinuz", "initrd.img"]
        .iter()
        .map(|f| format!("/boot/files/installer/{img_id}/{f}"))
        .collect();
    anvil.wait_for(
        "the installer's kernel and initrd on the boot timeline",
        Duration::from_secs(10),
        |a| {
            let tl = a.timeline(&id);
            let fetched: Vec<&str> = tl["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["kind"] == "http.kernel" || e["kind"] == "http.initrd")
                .filter_map(|e| e["detail"]["path"].as_str())
                .collect();
            wanted
                .iter()
                .all(|w| fetched.contains(&w.as_str()))
                .then_some(())
        },
    );
    // Nothing has called back: the deployment is still waiting.
    assert_eq!(anvil.get(&format!("/machines/{id}"))["state"], "deploying");

    eprintln!(
        "mirror requests (client, path): {requests:?}\n{}",
        lab.log("mirror")
            .lines()
            .filter(|l| l.contains("\"GET "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    e2e::append_timing(
        "timings.txt",
        &format!(
            "e2e-installer timing: debian-12 netboot dns_from_dhcp={dns} qemu_start_to_mirror={:.1}s milestones: {} test_total={:.1}s",
            to_mirror.as_secs_f64(),
            seen.iter()
                .map(|(n, t)| format!("{n}={:.1}s", t.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(" "),
            t0.elapsed().as_secs_f64()
        ),
    );
    lab.stop(vm);
    lab.stop("mirror");
}
