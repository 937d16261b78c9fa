//! End to end, a rack of one: an IPMI BMC (OpenIPMI `ipmi_sim`) whose
//! chassis control starts and stops a real machine (QEMU, BIOS with the iPXE
//! ROM); `anvil rack up` with a one-line manifest enrols the BMC, sets PXE
//! boot, powers the machine on through the BMC and waits until the machine
//! has network-booted from Anvil (DHCP, HTTP boot) and its discovery ramdisk
//! called home.
//!
//! Where everything runs: Anvil is inside the lab's network namespace (see
//! `e2e`), so the BMC must be reachable from there; and the machine's tap is
//! in that namespace, so QEMU must be started there. Hence `ipmi_sim` runs
//! inside the namespace too, on an address of the namespace's own loopback
//! (127.77.0.2:623): private to this lab, so it can neither collide with
//! another simulator nor be seen from outside; its chassis_control script,
//! and so QEMU, inherit the namespace. The CLI runs there as well
//! (`ip netns exec`), since Anvil listens on the bridge's 10.77.<n>.1.
//!
//! IPMI reports no NICs, so the manifest's `mac` column (the PXE NIC's MAC)
//! is what ties the enrolled machine to the one that PXE-boots; the machine
//! only ever learns its MAC from QEMU's command line, never from the BMC.
//!
//! Needs root and the packages of `e2e::prerequisites` plus `openipmi
//! ipmitool`; `ANVIL_SKIP_VM_TESTS=1` skips it.

#[path = "e2e/commission_lab.rs"]
mod commission_lab;
mod common;
mod e2e;

use e2e::{Anvil, BootResult, Firmware, Lab, MILESTONES};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The BMC's address inside the lab's namespace (its own loopback).
const BMC_IP: &str = "127.77.0.2";
const BMC_USER: &str = "admin";
const BMC_PASSWORD: &str = "rack-bmc-pw-7";
/// `anvil rack up --timeout`.
const RACK_TIMEOUT_SECS: u64 = 240;

/// `ipmi_sim` and `ipmitool`, or a failure naming their Debian packages.
fn ipmi_prerequisites() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = ["ipmi_sim", "ipmitool"]
        .into_iter()
        .filter(|b| {
            !std::env::split_paths(&path)
                .chain(["/usr/bin".into(), "/usr/sbin".into()])
                .any(|d| d.join(b).is_file())
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the rack bring-up test cannot run: {} not found: install the Debian packages \
         `openipmi ipmitool` (apt-get install -y openipmi ipmitool), or set \
         ANVIL_SKIP_VM_TESTS=1 to skip the VM tests",
        missing.join(" and ")
    );
}

/// Anvil as the boot network's only server: DHCP (full), TFTP, HTTP boot
/// and Router Advertisements on `br0`.
fn anvil_boot_toml(lab: &Lab) -> String {
    format!(
        "[ipv6_ra]\ninterfaces = [\"br0\"]\n\n{}",
        commission_lab::network_boot_toml(lab, "e2e")
    )
}

/// An `ipmi_sim` BMC in the lab's namespace whose chassis control is a
/// shell script that really powers a QEMU machine on and off.
///
/// The script keeps its state in files of `dir`: `boot` (the device last
/// set), `calls` (every `set`, and every VM start with its `-boot`
/// argument), `vm.pid` (the running QEMU), `vm.started` (its start time).
/// `get power` is 1 exactly while that QEMU is alive. Dropping this kills
/// the QEMU (by its PID, checked to be our QEMU); the lab kills `ipmi_sim`.
struct IpmiVmBmc {
    dir: PathBuf,
    serial: PathBuf,
}

impl IpmiVmBmc {
    fn start(lab: &Lab, mac: &str) -> IpmiVmBmc {
        let dir = lab.dir.join("bmc");
        std::fs::create_dir_all(dir.join("state")).unwrap();
        std::fs::write(dir.join("boot"), "default\n").unwrap();
        std::fs::write(dir.join("calls"), "").unwrap();
        let tap = lab.add_tap();
        let serial = lab.dir.join("vm1.serial");
        let script = dir.join("chassis_control");
        write_executable(&script, &chassis_control_script(&dir, &serial, &tap, mac));
        std::fs::write(
            dir.join("lan.conf"),
            format!(
                "name \"rack\"\n\
                 set_working_mc 0x20\n\
                 startlan 1\n\
                 \x20 addr {BMC_IP} 623\n\
                 \x20 priv_limit admin\n\
                 \x20 allowed_auths_callback none md2 md5 straight\n\
                 \x20 allowed_auths_user none md2 md5 straight\n\
                 \x20 allowed_auths_operator none md2 md5 straight\n\
                 \x20 allowed_auths_admin none md2 md5 straight\n\
                 \x20 guid 0123456789abcdef0123456789abcdef\n\
                 endlan\n\
                 chassis_control \"{script} bmc\"\n\
                 user 2 true \"{BMC_USER}\" \"{BMC_PASSWORD}\" admin 10 none md2 md5 straight\n",
                script = script.display(),
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("bmc.emu"),
            "mc_setbmc 0x20\n\
             mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n\
             sel_enable 0x20 1000 0x0a\n\
             mc_enable 0x20\n",
        )
        .unwrap();
        let mut cmd = Lab::command_in(&lab.ns, "ipmi_sim");
        cmd.arg("-c")
            .arg(dir.join("lan.conf"))
            .arg("-f")
            .arg(dir.join("bmc.emu"))
            .arg("-s")
            .arg(dir.join("state"))
            .arg("-n");
        lab.spawn("ipmi_sim", cmd);
        let bmc = IpmiVmBmc { dir, serial };
        bmc.wait_ready(lab);
        bmc
    }

    /// Until `ipmitool chassis power status` answers from inside the
    /// namespace (which also runs the chassis_control script once).
    fn wait_ready(&self, lab: &Lab) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = lab.exited("ipmi_sim") {
                panic!("ipmi_sim exited ({st}):\n{}", lab.log("ipmi_sim"));
            }
            let o = ipmitool(lab, &["chassis", "power", "status"]);
            if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("is off") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ipmi_sim on {BMC_IP}:623 in {} did not answer: {}{}\n{}",
                lab.ns,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                lab.log("ipmi_sim")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn calls(&self) -> Vec<String> {
        e2e::read_lossy(&self.dir.join("calls"))
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// When the chassis control last started QEMU.
    fn vm_started(&self) -> Option<std::time::SystemTime> {
        let s = e2e::read_lossy(&self.dir.join("vm.started"));
        let secs: f64 = s.trim().parse().ok()?;
        Some(std::time::UNIX_EPOCH + Duration::from_secs_f64(secs))
    }

    /// The PID of the running QEMU, if it is one (PIDs get reused).
    fn vm_pid(&self) -> Option<u32> {
        let pid: u32 = e2e::read_lossy(&self.dir.join("vm.pid"))
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = String::from_utf8_lossy(&cmdline).contains(&*self.serial.to_string_lossy());
        ours.then_some(pid)
    }
}

impl Drop for IpmiVmBmc {
    fn drop(&mut self) {
        if let Some(pid) = self.vm_pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn write_executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// ipmi_sim runs `<script> bmc get power boot` (prints `power:N` and
/// `boot:DEV`) and `<script> bmc set <key> <value> …`. `set power 1`
/// starts the VM in the background (`-boot n` when the boot device is
/// `pxe`, else `-boot c`: there is no disk, so that boot fails, as a real
/// empty machine's would), `set power 0` and `set shutdown 1` kill it,
/// `set reset 1` restarts it.
fn chassis_control_script(dir: &Path, serial: &Path, tap: &str, mac: &str) -> String {
    let d = dir.display();
    let serial = serial.display();
    format!(
        r#"#!/bin/sh
d='{d}'
shift
op=$1
shift
alive() {{
    p=$(cat "$d/vm.pid" 2>/dev/null)
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null
}}
start_vm() {{
    alive && return 0
    if [ "$(cat "$d/boot")" = pxe ]; then b=n; else b=c; fi
    echo "vm start -boot $b" >> "$d/calls"
    date +%s.%N > "$d/vm.started"
    qemu-system-x86_64 -machine q35 -accel tcg -m 512 -smp 1 \
        -nographic -nodefaults -monitor none -no-reboot -boot "$b" \
        -serial 'file:{serial}' \
        -netdev tap,id=n0,ifname={tap},script=no,downscript=no \
        -device e1000,netdev=n0,mac={mac},autonegotiation=off \
        </dev/null >>"$d/qemu.log" 2>&1 &
    echo $! > "$d/vm.pid"
}}
stop_vm() {{
    if alive; then
        p=$(cat "$d/vm.pid")
        kill "$p"
        i=0
        while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
        kill -9 "$p" 2>/dev/null
        echo "vm stop" >> "$d/calls"
    fi
    rm -f "$d/vm.pid"
}}
case "$op" in
get)
    for k in "$@"; do
        case "$k" in
        power) if alive; then echo power:1; else echo power:0; fi ;;
        boot) echo "boot:$(cat "$d/boot")" ;;
        esac
    done ;;
set)
    while [ $# -ge 2 ]; do
        k=$1; v=$2; shift 2
        echo "$k $v" >> "$d/calls"
        case "$k" in
        power) if [ "$v" = 1 ]; then start_vm; else stop_vm; fi ;;
        boot) echo "$v" > "$d/boot" ;;
        shutdown) stop_vm ;;
        reset) stop_vm; start_vm ;;
        esac
    done ;;
esac
exit 0
"#
    )
}

fn ipmitool(lab: &Lab, args: &[&str]) -> std::process::Output {
    Lab::command_in(&lab.ns, "ipmitool")
        .args(["-I", "lanplus", "-C", "3", "-N", "1", "-R", "2"])
        .args(["-H", BMC_IP, "-U", BMC_USER, "-P", BMC_PASSWORD])
        .args(args)
        .output()
        .expect("cannot run ipmitool")
}

/// Kinds of the recorded boot events of a timeline, in order.
fn event_kinds(tl: &Value) -> Vec<String> {
    tl["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["kind"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Serial-console milestones seen so far, relative to the QEMU start.
fn note_milestones(
    serial: &str,
    since_vm_start: Option<Duration>,
    seen: &mut Vec<(&'static str, Duration)>,
) {
    let Some(now) = since_vm_start else {
        return;
    };
    for (name, text) in MILESTONES {
        if !seen.iter().any(|(m, _)| m == name) && serial.contains(text) {
            seen.push((name, now));
        }
    }
}

#[test]
fn rack_up_powers_on_an_ipmi_machine_that_pxe_boots_and_is_discovered() {
    if e2e::prerequisites(false).is_none() {
        return;
    }
    ipmi_prerequisites();
    let lab = Lab::new();
    let anvil = Anvil::start(&lab, &anvil_boot_toml(&lab));
    let mac = lab.mac(1);
    // Declared after the lab: dropped (its QEMU killed) before the lab.
    let bmc = IpmiVmBmc::start(&lab, &mac);

    let hostname = "rack-e2e-01";
    let pw_file = lab.dir.join("bmc-password");
    std::fs::write(&pw_file, format!("{BMC_PASSWORD}\n")).unwrap();
    let manifest = lab.dir.join("rack.csv");
    std::fs::write(
        &manifest,
        format!(
            "driver,bmc_address,bmc_port,username,password_file,hostname,rack,position,mac\n\
             ipmi,{BMC_IP},623,{BMC_USER},{},{hostname},R01,U07,{mac}\n",
            pw_file.display()
        ),
    )
    .unwrap();

    // `anvil rack up`, inside the namespace (Anvil is on the bridge there);
    // its output goes to files, and the serial console is watched meanwhile.
    let out_path = lab.dir.join("rack-up.json");
    let err_path = lab.dir.join("rack-up.stderr");
    let mut cmd = Lab::command_in(&lab.ns, common::ANVIL);
    cmd.args(["rack", "up"])
        .arg(&manifest)
        .args(["--timeout", &RACK_TIMEOUT_SECS.to_string(), "-o", "json"])
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
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("cannot run anvil rack up");
    let mut milestones: Vec<(&'static str, Duration)> = Vec::new();
    let status = loop {
        let since_vm = bmc
            .vm_started()
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok());
        note_milestones(&e2e::read_lossy(&bmc.serial), since_vm, &mut milestones);
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > Duration::from_secs(RACK_TIMEOUT_SECS + 60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "anvil rack up did not end within its own timeout\n===== serial =====\n{}\n===== logs ====={}",
                e2e::printable(&e2e::read_lossy(&bmc.serial)),
                lab.log_tails()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let rack_up_secs = started.elapsed().as_secs_f64();
    let stdout = e2e::read_lossy(&out_path);
    let stderr = e2e::read_lossy(&err_path);
    let serial = e2e::read_lossy(&bmc.serial);
    let context = || {
        format!(
            "\n===== rack up stdout =====\n{stdout}\n===== rack up stderr =====\n{stderr}\n\
             ===== BMC calls =====\n{:?}\n===== serial console =====\n{}\n===== logs ====={}",
            bmc.calls(),
            e2e::printable(&serial),
            lab.log_tails()
        )
    };
    assert!(
        status.success(),
        "anvil rack up failed ({status}){}",
        context()
    );

    // The summary: one machine, enrolled, booted, discovered.
    let summary: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("rack up -o json is not JSON ({e}){}", context()));
    let rows = summary.as_array().expect("a list of outcomes");
    assert_eq!(rows.len(), 1, "{summary:#}");
    let row = &rows[0];
    assert_eq!(row["discovered"], true, "{summary:#}{}", context());
    assert_eq!(row["enrolled"], "created", "{summary:#}");
    assert_eq!(row["pxe_boot"], "ok", "{summary:#}");
    assert_eq!(row["hostname"], hostname, "{summary:#}");
    assert_eq!(row["error"], Value::Null, "{summary:#}");

    // The BMC was told: PXE, then power on; the VM started with `-boot n`.
    let calls = bmc.calls();
    let pos = |c: &str| {
        calls
            .iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("the BMC never got {c:?}: {calls:?}"))
    };
    assert!(pos("boot pxe") < pos("power 1"), "{calls:?}");
    assert!(pos("power 1") < pos("vm start -boot n"), "{calls:?}");
    assert!(
        !calls.iter().any(|c| c == "vm start -boot c"),
        "the VM was started without PXE: {calls:?}"
    );
    assert!(serial.contains("ANVIL-CALLHOME-OK"), "{}", context());

    // One machine: the enrolled one, which DHCP and the call-home found by
    // the manifest's MAC (no second, "discovered" machine).
    let list = anvil.get("/machines");
    assert_eq!(list["total"], 1, "a duplicate machine: {list:#}");
    let m = anvil.get(&format!("/machines/{hostname}"));
    assert_eq!(m["bmc"]["driver"], "ipmi", "{m:#}");
    assert_eq!(m["bmc"]["address"], BMC_IP, "{m:#}");
    assert_eq!(m["interfaces"][0]["mac"], mac.as_str(), "{m:#}");
    assert_eq!(m["interfaces"][0]["pxe"], true, "{m:#}");
    assert_eq!(m["power_state"], "on", "{m:#}");
    assert_eq!(m["state"], "new", "{m:#}");
    assert_eq!(m["facts"]["callhome"]["mac"], mac.as_str(), "{m:#}");
    let tags: Vec<&str> = m["tags"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        tags.contains(&"rack:R01") && tags.contains(&"position:U07"),
        "{m:#}"
    );

    // A complete boot timeline: DHCP, the iPXE script, kernel, initrd, and
    // the call-home, in that order.
    let tl = anvil.get(&format!("/machines/{hostname}/boot-timeline"));
    assert_eq!(tl["complete"], true, "{tl:#}");
    assert_eq!(tl["stopped_after"], Value::Null, "{tl:#}");
    let kinds = event_kinds(&tl);
    let expected = [
        "dhcp.discover",
        "dhcp.offer",
        "dhcp.request",
        "dhcp.ack",
        "http.script",
        "http.kernel",
        "http.initrd",
        "callhome",
    ];
    let mut at = 0;
    for want in expected {
        match kinds[at..].iter().position(|k| k == want) {
            Some(i) => at += i + 1,
            None => panic!("boot timeline lacks {want:?} (in order {expected:?}): {kinds:?}"),
        }
    }

    // The lease, bound to this machine, at the address it called home from.
    let leases = anvil.leases(&mac);
    assert!(!leases.is_empty(), "no lease for {mac}");
    let lease = &leases[0];
    assert_eq!(lease["state"], "bound", "{lease:#}");
    assert_eq!(lease["machine_id"], m["id"], "{lease:#}");
    assert_eq!(
        lease["address"], m["facts"]["callhome"]["ip"],
        "{lease:#} vs {m:#}"
    );

    let r = BootResult {
        to_callhome: milestones
            .iter()
            .find(|(n, _)| *n == "callhome")
            .map(|(_, t)| *t)
            .unwrap_or_default(),
        serial: serial.clone(),
        milestones: milestones.clone(),
    };
    e2e::record_timing(
        "rack_up_ipmi_sim_bios",
        "anvil+ipmi_sim",
        Firmware::BiosIpxeRom,
        &r,
    );
    println!(
        "e2e-rack: anvil rack up (enrol + PXE once + power on via ipmi_sim + boot + call-home) took {rack_up_secs:.1} s; timeline {kinds:?}"
    );

    // Again: idempotent and quick, nothing is booted twice.
    let again = Lab::command_in(&lab.ns, common::ANVIL)
        .args(["rack", "up"])
        .arg(&manifest)
        .args(["--timeout", "30", "-o", "json"])
        .env("ANVIL_URL", &anvil.url)
        .env("ANVIL_TOKEN", &anvil.token)
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "rack up again: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again[0]["enrolled"], "existing", "{again:#}");
    assert_eq!(
        again[0]["pxe_boot"], "skipped (already discovered)",
        "{again:#}"
    );
    assert_eq!(again[0]["discovered"], true, "{again:#}");
    assert_eq!(
        bmc.calls()
            .iter()
            .filter(|c| c.starts_with("vm start"))
            .count(),
        1,
        "{:?}",
        bmc.calls()
    );

    // Power off through the BMC really stops the machine.
    let out = ipmitool(&lab, &["chassis", "power", "off"]);
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while bmc.vm_pid().is_some() {
        assert!(Instant::now() < deadline, "QEMU still runs after power off");
        std::thread::sleep(Duration::from_millis(100));
    }
}
