//! Helpers of the commissioning end-to-end tests (`e2e_commission.rs`): a
//! server-like QEMU machine behind an `ipmi_sim` BMC, an LLDP "switch"
//! (Debian's `lldpd`) on the same wire, and the commissioning ramdisk.
//!
//! Included by `#[path]` from the VM tests that need it, so the shared
//! harness in `mod.rs` stays as the network-boot tests use it. Also
//! included by `e2e_deploy.rs`, which does not use every helper.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::e2e::{self, Lab};

/// The network-boot part of a VM lab's `anvil serve` configuration: TFTP of
/// the iPXE binaries and full DHCP on the lab's bridge (the DHCP network
/// named `network`) with HTTP boot on port 8080.
pub fn network_boot_toml(lab: &Lab, network: &str) -> String {
    let n = lab.n;
    let server = lab.server_ip();
    format!(
        r#"[tftp]
enabled = true
listen = "{server}:69"
root = "/usr/lib/ipxe"

[dhcp]
enabled = true
interfaces = ["br0"]

[[dhcp.network]]
name = "{network}"
subnet = "10.77.{n}.0/24"
mode = "full"
interface = "br0"
server_address = "{server}"
range_start = "10.77.{n}.100"
range_end = "10.77.{n}.199"
router = "{server}"
lease_time_secs = 3600

[dhcp.network.boot]
http_port = 8080
"#
    )
}

/// The configuration of the deployment labs (e2e_deploy, e2e_deploy_raid,
/// deploy_bench): network boot, commissioning that powers the machine off
/// when done with a 2 s LLDP window (no switch speaks in these labs), and
/// `extra` sections (e.g. `[deploy]`).
pub fn deploy_lab_toml(
    lab: &Lab,
    network: &str,
    commissioning_timeout_secs: u64,
    extra: &str,
) -> String {
    format!(
        "{}\n[commissioning]\ntimeout_secs = {commissioning_timeout_secs}\npower_off_when_done = true\nlldp_window_secs = 2\n{extra}",
        network_boot_toml(lab, network)
    )
}

pub const BMC_USER: &str = "admin";
pub const BMC_PASSWORD: &str = "commission-bmc-pw-3";

/// `ipmi_sim`, `ipmitool` and `lldpd`, or a failure naming their packages.
pub fn prerequisites() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = ["ipmi_sim", "ipmitool", "lldpd"]
        .into_iter()
        .filter(|b| {
            !std::env::split_paths(&path)
                .chain(["/usr/bin".into(), "/usr/sbin".into()])
                .any(|d| d.join(b).is_file())
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the commissioning tests cannot run: {} not found: install the Debian packages \
         `openipmi ipmitool lldpd`, or set ANVIL_SKIP_VM_TESTS=1 to skip the VM tests",
        missing.join(", ")
    );
}

/// The commissioning kernel and initrd: `$ANVIL_RAMDISK_DIR` as it is when
/// set (scripts/test.sh has just built it there), else built once into
/// target/ramdisk by `scripts/ramdisk/build.sh` (a no-op when up to date).
pub fn ramdisk() -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = e2e::workspace_root();
        if let Some(dir) = std::env::var_os("ANVIL_RAMDISK_DIR").map(PathBuf::from) {
            let complete = ["vmlinuz", "initrd.img"]
                .iter()
                .all(|f| dir.join(f).is_file());
            return if complete {
                Ok(dir)
            } else {
                Err(format!(
                    "ANVIL_RAMDISK_DIR={} has no vmlinuz and initrd.img: run \
                     scripts/ramdisk/build.sh {0} (or unset it to build into target/ramdisk)",
                    dir.display()
                ))
            };
        }
        let out = root.join("target/ramdisk");
        let started = Instant::now();
        let o = Command::new("bash")
            .arg(root.join("scripts/ramdisk/build.sh"))
            .arg(&out)
            .output()
            .map_err(|e| format!("cannot run scripts/ramdisk/build.sh: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "scripts/ramdisk/build.sh failed ({}):\n{}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        eprintln!(
            "ramdisk ready in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
        Ok(out)
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Installs the ramdisk where Anvil serves the commissioning stage.
pub fn install_ramdisk(data_dir: &Path) {
    let src = ramdisk();
    let dst = data_dir.join("boot/commissioning");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
}

/// Lets LLDP frames (01:80:c2:00:00:0e) cross the lab's bridge: a Linux
/// bridge drops link-local group addresses unless told otherwise, which a
/// real switch's LLDP never has to cross anyway (it is the neighbour).
pub fn bridge_forwards_lldp(lab: &Lab) {
    let st = Command::new("ip")
        .args(["-n", &lab.ns, "link", "set", "br0", "type", "bridge"])
        .args(["group_fwd_mask", "0x4000"])
        .status()
        .unwrap();
    assert!(st.success(), "cannot set group_fwd_mask on br0");
}

/// Debian's lldpd in a namespace of its own on the lab's wire, announcing
/// `system_name` every 2 s with port description `port_description`.
pub fn start_lldpd(lab: &Lab, system_name: &str, port_description: &str) -> String {
    let hns = lab.add_host("switch", "52:54:00:99:00:01", None);
    let dir = lab.dir.join("lldpd");
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("lldpd.conf");
    std::fs::write(
        &conf,
        format!(
            "configure system hostname {system_name}\n\
             configure lldp tx-interval 2\n\
             configure ports eth0 lldp portdescription \"{port_description}\"\n"
        ),
    )
    .unwrap();
    let mut cmd = Lab::command_in(&hns, "lldpd");
    cmd.arg("-d")
        .arg("-u")
        .arg(dir.join("lldpd.socket"))
        .arg("-O")
        .arg(&conf)
        .args(["-I", "eth0"]);
    lab.spawn("lldpd", cmd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.log("lldpd").contains("system name set") {
        if let Some(st) = lab.exited("lldpd") {
            panic!("lldpd exited ({st}):\n{}", lab.log("lldpd"));
        }
        assert!(
            Instant::now() < deadline,
            "lldpd did not start:\n{}",
            lab.log("lldpd")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    hns
}

/// What QEMU is told the machine is.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub manufacturer: String,
    pub product: String,
    pub serial: String,
    pub uuid: String,
    /// The PXE NIC (e1000 with QEMU's iPXE ROM) and a second NIC (virtio).
    pub macs: [String; 2],
    /// virtio-blk disk: (size in MiB, serial).
    pub virtio_disk: (u64, String),
    /// NVMe disk: (size in MiB, serial).
    pub nvme_disk: (u64, String),
    /// UEFI (OVMF; the first NIC is virtio without ROM, so the firmware's
    /// own PXE fetches ipxe.efi by TFTP) instead of BIOS with the e1000
    /// iPXE ROM.
    pub uefi: bool,
}

/// An `ipmi_sim` BMC whose chassis control starts and stops a QEMU machine
/// described by `<dir>/vm.args` (one argument per line, rewritten by
/// [`IpmiVm::configure`] between runs). With `never_boots`, power on only
/// records the state and no VM starts: a machine that never calls back.
pub struct IpmiVm {
    pub dir: PathBuf,
    pub serial: PathBuf,
    taps: [String; 2],
    /// The ipmi_sim process's name in the lab.
    name: String,
    pub bmc_ip: String,
}

/// The address of BMC number `k` on the lab namespace's loopback.
pub fn bmc_ip(k: u8) -> String {
    format!("127.77.0.{}", u16::from(k) + 2)
}

impl IpmiVm {
    pub fn start(lab: &Lab, never_boots: bool) -> IpmiVm {
        IpmiVm::start_nth(lab, 0, never_boots)
    }

    /// BMC number `k` of the lab (several machines at once): its own
    /// address `127.77.0.<k+2>`, directory `bmc<k>/` and serial log
    /// `vm<k>.serial`.
    pub fn start_nth(lab: &Lab, k: u8, never_boots: bool) -> IpmiVm {
        let name = format!("ipmi_sim{k}");
        let bmc_ip = bmc_ip(k);
        let dir = lab.dir.join(format!("bmc{k}"));
        std::fs::create_dir_all(dir.join("state")).unwrap();
        std::fs::write(dir.join("boot"), "default\n").unwrap();
        std::fs::write(dir.join("calls"), "").unwrap();
        let taps = [lab.add_tap(), lab.add_tap()];
        let serial = lab.dir.join(format!("vm{k}.serial"));
        let script = dir.join("chassis_control");
        write_executable(&script, &chassis_control_script(&dir, never_boots));
        std::fs::write(
            dir.join("lan.conf"),
            format!(
                "name \"commission\"\n\
                 set_working_mc 0x20\n\
                 startlan 1\n\
                 \x20 addr {bmc_ip} 623\n\
                 \x20 priv_limit admin\n\
                 \x20 allowed_auths_callback none md2 md5 straight\n\
                 \x20 allowed_auths_user none md2 md5 straight\n\
                 \x20 allowed_auths_operator none md2 md5 straight\n\
                 \x20 allowed_auths_admin none md2 md5 straight\n\
                 \x20 guid 0123456789abcdef0123456789abcd{k:02x}\n\
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
        lab.spawn(&name, cmd);
        let vm = IpmiVm {
            dir,
            serial,
            taps,
            name,
            bmc_ip,
        };
        vm.wait_ready(lab);
        vm
    }

    /// Writes the QEMU arguments of the next power-on: q35, TCG, 2 CPUs,
    /// 1 GiB, BIOS with the e1000 iPXE ROM, the SMBIOS type 1 strings, a
    /// virtio-blk and an NVMe disk with serials, two NICs.
    pub fn configure(&self, spec: &VmSpec) {
        let disk = |name: &str, mib: u64| -> PathBuf {
            let p = self.dir.join(name);
            let _ = std::fs::remove_file(&p);
            let o = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&p)
                .arg(format!("{mib}M"))
                .output()
                .expect("qemu-img (Debian qemu-utils)");
            assert!(o.status.success(), "qemu-img: {o:?}");
            p
        };
        let vda = disk("virtio.qcow2", spec.virtio_disk.0);
        let nvme = disk("nvme.qcow2", spec.nvme_disk.0);
        let mut args: Vec<String> = vec![
            "-machine".into(),
            "q35".into(),
            "-accel".into(),
            "tcg".into(),
            "-m".into(),
            "1024".into(),
            "-smp".into(),
            "2".into(),
            "-nographic".into(),
            "-nodefaults".into(),
            "-monitor".into(),
            "none".into(),
            "-no-reboot".into(),
            "-serial".into(),
            format!("file:{}", self.serial.display()),
            "-smbios".into(),
            format!(
                "type=1,manufacturer={},product={},serial={},uuid={}",
                spec.manufacturer, spec.product, spec.serial, spec.uuid
            ),
            "-netdev".into(),
            format!("tap,id=n0,ifname={},script=no,downscript=no", self.taps[0]),
            "-device".into(),
            if spec.uefi {
                format!("virtio-net-pci,netdev=n0,mac={},romfile=", spec.macs[0])
            } else {
                format!("e1000,netdev=n0,mac={},autonegotiation=off", spec.macs[0])
            },
            "-netdev".into(),
            format!("tap,id=n1,ifname={},script=no,downscript=no", self.taps[1]),
            "-device".into(),
            format!("virtio-net-pci,netdev=n1,mac={},romfile=", spec.macs[1]),
            "-drive".into(),
            format!("file={},if=none,id=d0,format=qcow2", vda.display()),
            "-device".into(),
            format!("virtio-blk-pci,drive=d0,serial={}", spec.virtio_disk.1),
            "-drive".into(),
            format!("file={},if=none,id=d1,format=qcow2", nvme.display()),
            "-device".into(),
            format!("nvme,drive=d1,serial={}", spec.nvme_disk.1),
        ];
        if spec.uefi {
            args.extend(["-bios".into(), e2e::OVMF.into()]);
        }
        std::fs::write(self.dir.join("vm.args"), args.join("\n") + "\n").unwrap();
    }

    /// Lets the next power-on's QEMU reboot instead of exiting on a
    /// reboot (`-no-reboot` off): a deployed machine reboots into its disk.
    pub fn allow_reboot(&self) {
        let path = self.dir.join("vm.args");
        let args = std::fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = args.lines().filter(|a| *a != "-no-reboot").collect();
        std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    }

    /// Gives the next power-on's QEMU `mib` MiB of RAM instead of the
    /// 1 GiB of [`IpmiVm::configure`] (the deployment benchmark's small-node
    /// run). The machine must be off for it to matter.
    pub fn set_memory_mib(&self, mib: u32) {
        let path = self.dir.join("vm.args");
        let mut args: Vec<String> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        let i = args.iter().position(|a| a == "-m").expect("vm.args has -m");
        args[i + 1] = mib.to_string();
        std::fs::write(&path, args.join("\n") + "\n").unwrap();
    }

    fn wait_ready(&self, lab: &Lab) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = lab.exited(&self.name) {
                panic!("ipmi_sim exited ({st}):\n{}", lab.log(&self.name));
            }
            let o = Lab::command_in(&lab.ns, "ipmitool")
                .args(["-I", "lanplus", "-C", "3", "-N", "1", "-R", "2"])
                .args(["-H", &self.bmc_ip, "-U", BMC_USER, "-P", BMC_PASSWORD])
                .args(["chassis", "power", "status"])
                .output()
                .expect("cannot run ipmitool");
            if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("is off") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ipmi_sim on {}:623 did not answer: {}{}\n{}",
                self.bmc_ip,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                lab.log(&self.name)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every `set` the BMC got, and every VM start.
    pub fn calls(&self) -> Vec<String> {
        e2e::read_lossy(&self.dir.join("calls"))
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// When the chassis control last started QEMU.
    pub fn vm_started(&self) -> Option<std::time::SystemTime> {
        let s = e2e::read_lossy(&self.dir.join("vm.started"));
        let secs: f64 = s.trim().parse().ok()?;
        Some(std::time::UNIX_EPOCH + Duration::from_secs_f64(secs))
    }

    /// The PID of the running QEMU, if it is ours (PIDs get reused).
    pub fn vm_pid(&self) -> Option<u32> {
        let pid: u32 = e2e::read_lossy(&self.dir.join("vm.pid"))
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = String::from_utf8_lossy(&cmdline).contains(&*self.serial.to_string_lossy());
        ours.then_some(pid)
    }

    /// Waits until QEMU is gone (the agent powered off, or Anvil through
    /// the BMC).
    pub fn wait_off(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.vm_pid().is_some() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        true
    }

    pub fn serial_log(&self) -> String {
        e2e::read_lossy(&self.serial)
    }
}

impl Drop for IpmiVm {
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

/// ipmi_sim runs `<script> bmc get power boot` and `<script> bmc set <key>
/// <value> …` (see e2e_rack.rs). `set power 1` starts QEMU with the
/// arguments of `vm.args` (`-boot n` when the boot device is `pxe`);
/// `set power 0` / `set shutdown 1` kill it; `set reset 1` restarts it.
/// With `never_boots`, power is only a file: the machine never runs.
fn chassis_control_script(dir: &Path, never_boots: bool) -> String {
    let d = dir.display();
    let never = if never_boots { "1" } else { "0" };
    format!(
        r#"#!/bin/sh
d='{d}'
never={never}
shift
op=$1
shift
alive() {{
    if [ $never = 1 ]; then [ -f "$d/power.on" ]; return; fi
    p=$(cat "$d/vm.pid" 2>/dev/null)
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null
}}
start_vm() {{
    alive && return 0
    if [ "$(cat "$d/boot")" = pxe ]; then b=n; else b=c; fi
    echo "vm start -boot $b" >> "$d/calls"
    date +%s.%N > "$d/vm.started"
    if [ $never = 1 ]; then touch "$d/power.on"; return 0; fi
    set --
    while IFS= read -r a; do set -- "$@" "$a"; done < "$d/vm.args"
    qemu-system-x86_64 "$@" -boot "$b" </dev/null >>"$d/qemu.log" 2>&1 &
    echo $! > "$d/vm.pid"
}}
stop_vm() {{
    rm -f "$d/power.on"
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
