//! End to end, commissioning: a server-like machine (QEMU, TCG: given
//! SMBIOS strings, a virtio disk and an NVMe disk with serials, two NICs)
//! behind an `ipmi_sim` BMC whose chassis control starts it, on the boot
//! network of a test namespace where Debian's `lldpd` plays the switch.
//! `POST /machines/{id}/actions/commission` makes Anvil PXE-boot the machine
//! through the BMC into the ramdisk of `scripts/ramdisk/build.sh`, whose
//! agent registers, collects the inventory with LLDP and uploads it; the
//! machine ends `ready` and `GET /machines/{id}/hardware` holds exactly
//! what QEMU was given. A second run (with CPU, memory and disk tests,
//! started with `anvil machine commission … --wait`) after the NVMe disk
//! was swapped shows the new disk while `?run=1` keeps the old one. A
//! machine that never calls back ends `failed` after the (shortened)
//! timeout, naming why, and the CLI exits non-zero. The same ramdisk,
//! booted by the discovery script (no token), discovers an unknown machine.
//!
//! Where everything runs: see e2e_rack.rs (Anvil, the BMC and so QEMU in
//! the lab's namespace; lldpd in a namespace of its own on the bridge).
//! Needs root and the packages of `e2e::prerequisites` plus `openipmi
//! ipmitool lldpd`; `ANVIL_SKIP_VM_TESTS=1` skips it.

#[path = "e2e/commission_lab.rs"]
mod commission_lab;
mod common;
mod e2e;

use commission_lab::{BMC_PASSWORD, BMC_USER, IpmiVm, VmSpec, network_boot_toml};
use e2e::{Anvil, Lab};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Power-on to `ready` may take this long in TCG (boot ~30 s, ramdisk and
/// LLDP ~15 s, tests ~20 s) with another VM test beside it.
const COMMISSION_TIMEOUT: Duration = Duration::from_secs(360);
const LLDP_SYSTEM_NAME: &str = "e2e-tor-switch-1";
const LLDP_PORT_DESCRIPTION: &str = "e2e uplink port 7";

/// Anvil as the boot network's only server (DHCP, TFTP, HTTP boot, RAs on
/// br0), commissioning with short test bounds.
fn anvil_toml(lab: &Lab, timeout_secs: u64) -> String {
    format!(
        r#"[ipv6_ra]
interfaces = ["br0"]

{}
[commissioning]
timeout_secs = {timeout_secs}
power_off_when_done = true
lldp_window_secs = 20
cpu_test_secs = 3
memory_test_percent = 25
memory_test_max_bytes = 67108864
memory_test_secs = 10
disk_test_bytes_per_disk = 8388608
disk_test_secs = 10
"#,
        network_boot_toml(lab, "e2e")
    )
}

fn create_machine(anvil: &Anvil, hostname: &str, macs: &[String], bmc_ip: &str) -> String {
    let (st, m) = anvil.request(
        "POST",
        "/machines",
        Some(json!({
            "hostname": hostname,
            "interfaces": [
                {"mac": macs[0], "pxe": true},
                {"mac": macs[1], "pxe": false},
            ],
            "bmc": {"driver": "ipmi", "address": bmc_ip, "port": 623,
                    "username": BMC_USER, "password": BMC_PASSWORD},
        })),
    );
    assert_eq!(st, 201, "create machine: {m:#}");
    m["id"].as_str().expect("machine id").to_string()
}

/// `POST /machines/{id}/actions/commission` → 202 with a job.
fn commission(anvil: &Anvil, id: &str, tests: &[&str]) -> Value {
    let (st, job) = anvil.request(
        "POST",
        &format!("/machines/{id}/actions/commission"),
        Some(json!({ "tests": tests })),
    );
    assert_eq!(st, 202, "commission: {job:#}");
    assert!(job["id"].is_string(), "{job:#}");
    job
}

/// `anvil machine commission ARGS… --wait -o json` from inside the lab's
/// namespace (Anvil listens on the bridge there).
fn cli_commission(lab: &Lab, anvil: &Anvil, args: &[&str]) -> std::process::Output {
    Lab::command_in(&lab.ns, common::ANVIL)
        .args(["machine", "commission"])
        .args(args)
        .args(["--wait", "-o", "json"])
        .env("ANVIL_URL", &anvil.url)
        .env("ANVIL_TOKEN", &anvil.token)
        .env("NO_COLOR", "1")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("cannot run anvil machine commission")
}

/// Polls the machine until it leaves `commissioning`; its final JSON.
fn wait_commissioned(anvil: &Anvil, id: &str, vm: &IpmiVm, lab: &Lab, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let m = anvil.get(&format!("/machines/{id}"));
        let state = m["state"].as_str().unwrap_or("");
        if state == "ready" || state == "failed" {
            return m;
        }
        if Instant::now() > deadline {
            panic!(
                "machine still {state} after {} s{}",
                within.as_secs(),
                context(anvil, id, vm, lab)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn context(anvil: &Anvil, id: &str, vm: &IpmiVm, lab: &Lab) -> String {
    let (_, runs) = anvil.request("GET", &format!("/machines/{id}/commissioning-runs"), None);
    format!(
        "\n===== runs =====\n{runs:#}\n===== BMC calls =====\n{:?}\n===== serial console =====\n{}\n===== logs ====={}",
        vm.calls(),
        e2e::printable(&vm.serial_log()),
        lab.log_tails()
    )
}

fn disk_with_serial<'a>(facts: &'a Value, serial: &str) -> &'a Value {
    facts["disks"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["serial"] == serial))
        .unwrap_or_else(|| panic!("no disk with serial {serial}: {:#}", facts["disks"]))
}

/// Seconds from the BMC starting QEMU (power on) to now.
fn since_power_on(vm: &IpmiVm) -> String {
    vm.vm_started()
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        .map(|d| format!("{:.1}s", d.as_secs_f64()))
        .unwrap_or_else(|| "?".into())
}

/// "facts posted at uptime N s" from the agent's console line.
fn facts_posted_uptime(serial: &str) -> Option<f64> {
    serial
        .lines()
        .find_map(|l| l.split("facts posted at uptime ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
}

fn record(line: &str) {
    e2e::append_timing("timings.txt", line);
}

#[test]
fn commissioning_stores_the_facts_qemu_was_given_and_a_second_run_shows_a_changed_disk() {
    if e2e::prerequisites(false).is_none() {
        return;
    }
    commission_lab::prerequisites();
    let lab = Lab::new();
    commission_lab::bridge_forwards_lldp(&lab);
    let anvil = Anvil::start(&lab, &anvil_toml(&lab, 600));
    commission_lab::install_ramdisk(&anvil.data_dir);
    commission_lab::start_lldpd(&lab, LLDP_SYSTEM_NAME, LLDP_PORT_DESCRIPTION);
    // Declared after the lab: dropped (its QEMU killed) before the lab.
    let vm = IpmiVm::start(&lab, false);
    let mut spec = VmSpec {
        manufacturer: "Anvil Test Works".into(),
        product: "AT-1000 Gen2".into(),
        serial: format!("AT-SN-{:04}", lab.n),
        uuid: "6c6f2e1c-3a4d-4a55-9a0b-0a0b0c0d0e0f".into(),
        macs: [lab.mac(1), lab.mac(2)],
        virtio_disk: (1024, "VDISK-0001".into()),
        nvme_disk: (2048, "NVME-0001".into()),
        uefi: false,
    };
    vm.configure(&spec);
    let id = create_machine(&anvil, "commission-e2e-01", &spec.macs, &vm.bmc_ip);

    // --- run 1: inventory only ---------------------------------------------------
    let started = Instant::now();
    commission(&anvil, &id, &[]);
    let m = wait_commissioned(&anvil, &id, &vm, &lab, COMMISSION_TIMEOUT);
    let to_ready = started.elapsed();
    let power_on_to_ready = since_power_on(&vm);
    assert_eq!(
        m["state"],
        "ready",
        "{m:#}{}",
        context(&anvil, &id, &vm, &lab)
    );
    let serial1 = vm.serial_log();

    let hw = anvil.get(&format!("/machines/{id}/hardware"));
    assert_eq!(hw["run_number"], 1, "{hw:#}");
    let facts = &hw["facts"];
    // DMI: what -smbios type=1 said.
    assert_eq!(
        facts["dmi"]["system_vendor"],
        spec.manufacturer.as_str(),
        "{:#}",
        facts["dmi"]
    );
    assert_eq!(
        facts["dmi"]["system_product"],
        spec.product.as_str(),
        "{:#}",
        facts["dmi"]
    );
    assert_eq!(
        facts["dmi"]["system_serial"],
        spec.serial.as_str(),
        "{:#}",
        facts["dmi"]
    );
    assert_eq!(
        facts["dmi"]["system_uuid"],
        spec.uuid.as_str(),
        "{:#}",
        facts["dmi"]
    );
    // Disks: sizes and serials, and which bus.
    let vda = disk_with_serial(facts, "VDISK-0001");
    assert_eq!(vda["size_bytes"], 1024u64 << 20, "{vda:#}");
    let nvme = disk_with_serial(facts, "NVME-0001");
    assert_eq!(nvme["size_bytes"], 2048u64 << 20, "{nvme:#}");
    assert_eq!(nvme["transport"], "nvme", "{nvme:#}");
    // NICs: both MACs.
    let macs: Vec<&str> = facts["nics"]
        .as_array()
        .map(|a| a.iter().filter_map(|n| n["mac"].as_str()).collect())
        .unwrap_or_default();
    for mac in &spec.macs {
        assert!(macs.contains(&mac.as_str()), "{mac} not among {macs:?}");
    }
    // LLDP: the switch was heard, by name and port description.
    let lldp = facts["lldp"].as_array().cloned().unwrap_or_default();
    assert!(
        lldp.iter().any(|n| n["system_name"] == LLDP_SYSTEM_NAME
            && n["port_description"] == LLDP_PORT_DESCRIPTION),
        "lldpd not heard: {:#}{}",
        facts["lldp"],
        context(&anvil, &id, &vm, &lab)
    );
    // The run: one inventory step, succeeded; its report in the timeline.
    let runs = anvil.get(&format!("/machines/{id}/commissioning-runs"));
    let run = &runs["items"][0];
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["system_uuid"], spec.uuid.as_str(), "{run:#}");
    assert_eq!(run["steps"][0]["kind"], "inventory", "{run:#}");
    assert_eq!(run["steps"][0]["status"], "succeeded", "{run:#}");
    let inventory = &run["steps"][0]["result"];
    assert_eq!(
        inventory["lldp_neighbours"].as_u64(),
        Some(lldp.len() as u64),
        "{run:#}"
    );
    // Anvil (or the agent) powered the machine off when done.
    assert!(
        vm.wait_off(Duration::from_secs(60)),
        "the machine is still on after commissioning{}",
        context(&anvil, &id, &vm, &lab)
    );
    assert!(
        serial1.contains("anvil-agent: registered"),
        "{}",
        e2e::printable(&serial1)
    );
    record(&format!(
        "e2e-commission timing: run=1 tests=none firmware=BiosIpxeRom api_to_ready={:.1}s power_on_to_ready={power_on_to_ready} kernel_uptime_at_facts_posted={} inventory_collect={}s inventory_total={}s",
        to_ready.as_secs_f64(),
        facts_posted_uptime(&serial1)
            .map(|u| format!("{u:.2}s"))
            .unwrap_or_else(|| "?".into()),
        inventory["collect_secs"],
        inventory["total_secs"]
    ));

    // --- run 2: the NVMe disk swapped, with hardware tests ---------------------
    spec.nvme_disk = (3072, "NVME-0002".into());
    vm.configure(&spec);
    // This time through the CLI, as automation would: it waits (with
    // progress bars on a terminal) and exits 0 only if the machine is ready.
    let started = Instant::now();
    let out = cli_commission(
        &lab,
        &anvil,
        &["commission-e2e-01", "--tests", "cpu,memory,disk"],
    );
    assert!(
        out.status.success(),
        "anvil machine commission --wait failed ({}): {}{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        context(&anvil, &id, &vm, &lab)
    );
    let m = wait_commissioned(&anvil, &id, &vm, &lab, COMMISSION_TIMEOUT);
    let to_ready = started.elapsed();
    let power_on_to_ready = since_power_on(&vm);
    assert_eq!(
        m["state"],
        "ready",
        "{m:#}{}",
        context(&anvil, &id, &vm, &lab)
    );
    let hw2 = anvil.get(&format!("/machines/{id}/hardware"));
    assert_eq!(hw2["run_number"], 2, "{hw2:#}");
    let new = disk_with_serial(&hw2["facts"], "NVME-0002");
    assert_eq!(new["size_bytes"], 3072u64 << 20, "{new:#}");
    assert!(
        !hw2["facts"]["disks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["serial"] == "NVME-0001"),
        "the old disk is still listed: {:#}",
        hw2["facts"]["disks"]
    );
    assert_eq!(hw2["runs_with_facts"], json!([2, 1]), "{hw2:#}");
    // The first run's facts are kept as they were.
    let hw1 = anvil.get(&format!("/machines/{id}/hardware?run=1"));
    assert_eq!(hw1["run_number"], 1);
    disk_with_serial(&hw1["facts"], "NVME-0001");
    // The tests ran, with results.
    let runs = anvil.get(&format!("/machines/{id}/commissioning-runs"));
    let run = &runs["items"][0];
    assert_eq!(run["number"], 2, "{run:#}");
    let kinds: Vec<&str> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["inventory", "cpu_test", "memory_test", "disk_test"],
        "{run:#}"
    );
    for s in run["steps"].as_array().unwrap() {
        assert_eq!(s["status"], "succeeded", "{s:#}");
        assert!(s["result"].is_object(), "a step without result: {s:#}");
    }
    let cpu = &run["steps"][1]["result"];
    assert_eq!(cpu["threads"], 2, "{cpu:#}");
    assert_eq!(cpu["errors"], 0, "{cpu:#}");
    let mem = &run["steps"][2]["result"];
    assert!(mem["bytes_tested"].as_u64().unwrap_or(0) > 0, "{mem:#}");
    let disks = run["steps"][3]["result"]["disks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(disks.len(), 2, "{:#}", run["steps"][3]);
    assert!(
        disks.iter().all(|d| d["bytes_read"] == 8u64 << 20),
        "{disks:#?}"
    );
    record(&format!(
        "e2e-commission timing: run=2 tests=cpu,memory,disk firmware=BiosIpxeRom api_to_ready={:.1}s power_on_to_ready={power_on_to_ready} kernel_uptime_at_facts_posted={}",
        to_ready.as_secs_f64(),
        facts_posted_uptime(&vm.serial_log())
            .map(|u| format!("{u:.2}s"))
            .unwrap_or_else(|| "?".into())
    ));
}

#[test]
fn a_machine_that_never_calls_back_fails_after_the_timeout() {
    if e2e::prerequisites(false).is_none() {
        return;
    }
    commission_lab::prerequisites();
    let lab = Lab::new();
    let timeout_secs = 15;
    let anvil = Anvil::start(&lab, &anvil_toml(&lab, timeout_secs));
    commission_lab::install_ramdisk(&anvil.data_dir);
    let vm = IpmiVm::start(&lab, true);
    let macs = [lab.mac(1), lab.mac(2)];
    let id = create_machine(&anvil, "commission-e2e-silent", &macs, &vm.bmc_ip);

    // Through the CLI: `--wait` ends with a non-zero exit when a machine
    // failed, naming it.
    let started = Instant::now();
    let out = cli_commission(&lab, &anvil, &["commission-e2e-silent"]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "anvil machine commission --wait succeeded for a machine that never booted: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("commission-e2e-silent"), "{stderr}");
    let m = wait_commissioned(&anvil, &id, &vm, &lab, Duration::from_secs(30));
    assert_eq!(m["state"], "failed", "{m:#}");
    assert!(
        took >= Duration::from_secs(timeout_secs - 1),
        "failed after {took:?}, before the {timeout_secs} s timeout: {m:#}"
    );
    let runs = anvil.get(&format!("/machines/{id}/commissioning-runs"));
    let run = &runs["items"][0];
    assert_eq!(run["state"], "failed", "{run:#}");
    let reason = run["failure_reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("timed out") && reason.contains("no agent registered"),
        "the reason should say the run timed out without an agent: {reason:?}\n{run:#}"
    );
    // Anvil did power the machine on with PXE: the BMC saw it.
    let calls = vm.calls();
    assert!(
        calls.iter().any(|c| c == "boot pxe") && calls.iter().any(|c| c == "power 1"),
        "{calls:?}"
    );
}

/// Anvil's CPU time so far (user + system), from /proc/<pid>/stat.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of stat(5); rest starts at 3.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

/// One machine's figures: id, power-on → ready, API call → ready, kernel
/// uptime when its facts were posted.
type BenchResult = (String, String, Duration, Option<f64>);

/// The commissioning benchmark (`scripts/bench/commission.sh` runs it; not
/// part of the normal suite): `ANVIL_BENCH_VMS` machines (default 1) at
/// once, BIOS or UEFI (`ANVIL_BENCH_FIRMWARE=bios|uefi`), inventory with the
/// default 30 s LLDP window unless `ANVIL_BENCH_LLDP_WINDOW` says otherwise
/// (lldpd sends every 2 s, so the window ends early once every connected
/// interface heard it; `ANVIL_BENCH_NO_LLDPD=1` starts no lldpd, so the
/// whole window is spent). Prints power-on → ready per machine, kernel start
/// → facts posted, and Anvil's CPU seconds per commissioning.
#[test]
#[ignore = "benchmark: scripts/bench/commission.sh"]
fn bench_commission() {
    if e2e::prerequisites(true).is_none() {
        return;
    }
    commission_lab::prerequisites();
    let n: u8 = std::env::var("ANVIL_BENCH_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let uefi = std::env::var("ANVIL_BENCH_FIRMWARE").as_deref() == Ok("uefi");
    let window: u32 = std::env::var("ANVIL_BENCH_LLDP_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let lab = Lab::new();
    commission_lab::bridge_forwards_lldp(&lab);
    let toml = anvil_toml(&lab, 900).replace(
        "lldp_window_secs = 20",
        &format!("lldp_window_secs = {window}"),
    );
    let anvil = Anvil::start(&lab, &toml);
    commission_lab::install_ramdisk(&anvil.data_dir);
    // ANVIL_BENCH_NO_LLDPD=1: no switch speaks LLDP, so the inventory
    // listens for the whole window (the worst case).
    if std::env::var("ANVIL_BENCH_NO_LLDPD").as_deref() != Ok("1") {
        commission_lab::start_lldpd(&lab, LLDP_SYSTEM_NAME, LLDP_PORT_DESCRIPTION);
    }
    let mut vms = Vec::new();
    for k in 0..n {
        let vm = IpmiVm::start_nth(&lab, k, false);
        let spec = VmSpec {
            manufacturer: "Anvil Bench".into(),
            product: "AB-1".into(),
            serial: format!("AB-{k:03}"),
            uuid: format!("6c6f2e1c-3a4d-4a55-9a0b-0a0b0c0d0e{k:02x}"),
            macs: [lab.mac(2 * k + 1), lab.mac(2 * k + 2)],
            virtio_disk: (1024, format!("VD-{k:03}")),
            nvme_disk: (2048, format!("NV-{k:03}")),
            uefi,
        };
        vm.configure(&spec);
        let id = create_machine(&anvil, &format!("bench-{k:02}"), &spec.macs, &vm.bmc_ip);
        vms.push((vm, id));
    }
    let cpu_before = cpu_secs(anvil.pid);
    let started = Instant::now();
    for (_, id) in &vms {
        commission(&anvil, id, &[]);
    }
    // Poll every machine, noting each one when it is first seen ready (so
    // one slow machine does not inflate the others' figures).
    let mut results: Vec<Option<BenchResult>> = vec![None; vms.len()];
    let deadline = Instant::now() + Duration::from_secs(900);
    while results.iter().any(Option::is_none) {
        for (i, (vm, id)) in vms.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            let m = anvil.get(&format!("/machines/{id}"));
            match m["state"].as_str() {
                Some("ready") => {
                    results[i] = Some((
                        id.clone(),
                        since_power_on(vm),
                        started.elapsed(),
                        facts_posted_uptime(&vm.serial_log()),
                    ))
                }
                Some("failed") => panic!("{m:#}{}", context(&anvil, id, vm, &lab)),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "not ready in time{}",
                context(&anvil, id, vm, &lab)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let results: Vec<_> = results.into_iter().flatten().collect();
    let cpu = cpu_secs(anvil.pid) - cpu_before;
    for (id, power_on_to_ready, api_to_ready, facts) in &results {
        record(&format!(
            "bench-commission: vms={n} firmware={} lldp_window={window}s machine={id} power_on_to_ready={power_on_to_ready} api_to_ready<={:.1}s kernel_uptime_at_facts_posted={}",
            if uefi { "uefi" } else { "bios" },
            api_to_ready.as_secs_f64(),
            facts
                .map(|u| format!("{u:.2}s"))
                .unwrap_or_else(|| "?".into())
        ));
    }
    record(&format!(
        "bench-commission: vms={n} firmware={} all_ready={:.1}s anvil_cpu_total={cpu:.2}s anvil_cpu_per_commissioning={:.3}s",
        if uefi { "uefi" } else { "bios" },
        started.elapsed().as_secs_f64(),
        cpu / f64::from(n)
    ));
}

/// The same ramdisk serves discovery: booted by the discovery script (no
/// `anvil.token=`), the agent calls home and powers off, and the machine
/// is known to Anvil by its MAC with the address it got.
#[test]
fn the_ramdisk_also_discovers_an_unknown_machine() {
    if e2e::prerequisites(false).is_none() {
        return;
    }
    let lab = Lab::new();
    let anvil = Anvil::start(&lab, &anvil_toml(&lab, 600));
    // In place of the discovery initrd of the network-boot tests.
    let src = commission_lab::ramdisk();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(src.join(f), anvil.data_dir.join("boot/discovery").join(f)).unwrap();
    }
    let mac = lab.mac(9);
    let vm = e2e::Vm::start(&lab, "vm-discovery", e2e::Firmware::BiosIpxeRom, &mac);
    let r = vm.wait_for_callhome(&lab);
    assert!(
        r.serial.contains("anvil-agent: called home"),
        "{}",
        e2e::printable(&r.serial)
    );
    let m = anvil
        .machine_by_mac(&mac)
        .unwrap_or_else(|| panic!("no machine with {mac}{}", lab.log_tails()));
    assert_eq!(m["state"], "new", "{m:#}");
    assert_eq!(m["facts"]["callhome"]["mac"], mac.as_str(), "{m:#}");
    let ip = m["facts"]["callhome"]["ip"].as_str().unwrap_or("");
    assert!(ip.starts_with(&format!("10.77.{}.", lab.n)), "{m:#}");
}
