//! Test support: real OpenIPMI `ipmi_sim` BMCs on loopback addresses.
//!
//! `ipmi_sim` (Debian package `openipmi`) implements IPMI v2.0 lanplus for
//! real; it does not simulate power or boot devices but calls a
//! `chassis_control` program for them. [`SimBmc`] writes one that keeps the
//! state in files of the BMC's temporary directory, so a test can read what
//! the BMC was told (`power()`, `boot()`, `calls()`), and binds every
//! simulator to its own 127.77.x.y address (two simulators on one address
//! silently steal each other's packets). Used by this crate's tests and
//! benchmark, and available to other crates' tests.

use crate::commands;
use anvil_power::BmcCredentials;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The Debian packages the IPMI tests need.
pub const DEBIAN_PACKAGES: &str = "openipmi ipmitool";

/// Whether the IPMI peers are installed. `Ok(true)`: run the test;
/// `Ok(false)`: skip it (`ANVIL_SKIP_IPMI=1`); `Err`: fail, with a message
/// naming the Debian packages.
pub fn tools_available() -> Result<bool, String> {
    check_tools(
        std::env::var_os("PATH"),
        std::env::var("ANVIL_SKIP_IPMI").ok(),
    )
}

fn check_tools(path: Option<std::ffi::OsString>, skip: Option<String>) -> Result<bool, String> {
    let missing: Vec<&str> = ["ipmi_sim", "ipmitool"]
        .into_iter()
        .filter(|b| find_in_path(path.as_deref(), b).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(true);
    }
    if skip.as_deref() == Some("1") {
        return Ok(false);
    }
    Err(format!(
        "{} not found: install the Debian packages `{DEBIAN_PACKAGES}` \
         (apt-get install -y {DEBIAN_PACKAGES}), or set ANVIL_SKIP_IPMI=1 to skip the IPMI tests",
        missing.join(" and ")
    ))
}

fn find_in_path(path: Option<&std::ffi::OsStr>, bin: &str) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .map(|d| d.join(bin))
        .find(|f| f.is_file())
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A 127.77.x.y address that nothing is bound to on `port`, different for
/// every call in this process and (through the process ID) likely unique
/// across test binaries running at once; a bind probe settles the rest.
pub fn free_loopback_addr(port: u16) -> io::Result<Ipv4Addr> {
    let pid = std::process::id();
    for _ in 0..4096 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // 250 × 250 addresses; the pid picks a starting region.
        let idx = (pid.wrapping_mul(7919).wrapping_add(n)) % (250 * 250);
        let ip = Ipv4Addr::new(127, 77, (idx / 250 + 1) as u8, (idx % 250 + 2) as u8);
        // Without SO_REUSEADDR this bind fails while a simulator holds
        // the address (ipmi_sim sets it, so two simulators would not).
        if UdpSocket::bind(SocketAddr::from((ip, port))).is_ok() {
            return Ok(ip);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free 127.77.x.y address",
    ))
}

/// How to set up a simulated BMC.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub port: u16,
    pub username: String,
    pub password: String,
    /// 16 bytes as ipmi_sim stores them (IPMI byte order).
    pub guid: [u8; 16],
    /// FRU 0 content: (manufacturer, product, serial).
    pub fru: Option<(String, String, String)>,
    pub power_on: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            port: crate::DEFAULT_PORT,
            username: "admin".into(),
            password: "password".into(),
            // UUID 5b0c4f3e-9d2a-4c1b-8e7f-0123456789ab, byte-reversed as
            // the IPMI spec stores it.
            guid: [
                0xab, 0x89, 0x67, 0x45, 0x23, 0x01, 0x7f, 0x8e, 0x1b, 0x4c, 0x2a, 0x9d, 0x3e, 0x4f,
                0x0c, 0x5b,
            ],
            fru: None,
            power_on: false,
        }
    }
}

/// A running `ipmi_sim`. Killed (by its PID) when dropped.
pub struct SimBmc {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub username: String,
    pub password: String,
    dir: tempfile::TempDir,
    child: Child,
}

impl SimBmc {
    /// Starts a simulator on a fresh 127.77.x.y address and waits until it
    /// answers.
    pub fn start(opts: SimOptions) -> io::Result<SimBmc> {
        let ip = free_loopback_addr(opts.port)?;
        let mut sim = SimBmc::spawn_at(ip, opts)?;
        sim.wait_ready(Duration::from_secs(10))?;
        Ok(sim)
    }

    /// Starts a simulator on `ip` without waiting for it (for starting many
    /// at once); call `wait_ready` before use.
    pub fn spawn_at(ip: Ipv4Addr, opts: SimOptions) -> io::Result<SimBmc> {
        let dir = tempfile::Builder::new()
            .prefix("anvil-ipmi-sim")
            .tempdir()?;
        let d = dir.path();
        std::fs::create_dir(d.join("state"))?;
        std::fs::write(d.join("power"), if opts.power_on { "1\n" } else { "0\n" })?;
        std::fs::write(d.join("boot"), "default\n")?;
        std::fs::write(d.join("calls"), "")?;
        write_script(&d.join("chassis_control"), d)?;
        let guid: String = opts.guid.iter().map(|b| format!("{b:02x}")).collect();
        // ipmi_sim's users need an auth list even for RMCP+; lan.conf
        // strings are double-quoted, so quotes and backslashes are refused.
        for s in [&opts.username, &opts.password] {
            if s.contains('"') || s.contains('\\') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "quote or backslash in simulator credentials",
                ));
            }
        }
        let lan = format!(
            "name \"anvil\"\n\
             set_working_mc 0x20\n\
             startlan 1\n\
             \x20 addr {ip} {port}\n\
             \x20 priv_limit admin\n\
             \x20 allowed_auths_callback none md2 md5 straight\n\
             \x20 allowed_auths_user none md2 md5 straight\n\
             \x20 allowed_auths_operator none md2 md5 straight\n\
             \x20 allowed_auths_admin none md2 md5 straight\n\
             \x20 guid {guid}\n\
             endlan\n\
             chassis_control \"{script} bmc\"\n\
             user 2 true \"{user}\" \"{pw}\" admin 10 none md2 md5 straight\n",
            port = opts.port,
            script = d.join("chassis_control").display(),
            user = opts.username,
            pw = opts.password,
        );
        std::fs::write(d.join("lan.conf"), lan)?;
        let mut emu = String::from(
            "mc_setbmc 0x20\n\
             mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n\
             sel_enable 0x20 1000 0x0a\n",
        );
        if let Some((m, p, s)) = &opts.fru {
            let fru = commands::build_fru(m, p, s);
            let bytes: Vec<String> = fru.iter().map(|b| format!("0x{b:02x}")).collect();
            emu.push_str(&format!(
                "mc_add_fru_data 0x20 0 {} data {}\n",
                fru.len(),
                bytes.join(" ")
            ));
        }
        emu.push_str("mc_enable 0x20\n");
        std::fs::write(d.join("bmc.emu"), emu)?;
        let child = Command::new("ipmi_sim")
            .arg("-c")
            .arg(d.join("lan.conf"))
            .arg("-f")
            .arg(d.join("bmc.emu"))
            .arg("-s")
            .arg(d.join("state"))
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    io::Error::new(
                        e.kind(),
                        format!("ipmi_sim not found: apt-get install -y {DEBIAN_PACKAGES}"),
                    )
                } else {
                    e
                }
            })?;
        Ok(SimBmc {
            ip,
            port: opts.port,
            username: opts.username,
            password: opts.password,
            dir,
            child,
        })
    }

    /// Polls with Get Channel Authentication Capabilities until the
    /// simulator answers.
    pub fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        sock.connect(self.addr())?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let probe = crate::wire::encode_v15_sessionless(&crate::wire::encode_request(
            0x06,
            0x38,
            0,
            &[0x8E, 0x04],
        ));
        let start = Instant::now();
        let mut buf = [0u8; 512];
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!("ipmi_sim exited: {status}")));
            }
            let _ = sock.send(&probe);
            if let Ok(n) = sock.recv(&mut buf)
                && n > 0
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("ipmi_sim on {} did not answer", self.addr()),
        ))
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Credentials for a driver talking to this simulator.
    pub fn credentials(&self) -> BmcCredentials {
        BmcCredentials {
            address: self.ip.to_string(),
            port: (self.port != crate::DEFAULT_PORT).then_some(self.port),
            username: Some(self.username.clone()),
            password: Some(self.password.clone()),
            verify_tls: true,
            ca_pem: None,
        }
    }

    /// The power state the chassis_control program holds.
    pub fn power(&self) -> bool {
        read_trimmed(&self.dir.path().join("power")) == "1"
    }

    pub fn set_power(&self, on: bool) -> io::Result<()> {
        std::fs::write(
            self.dir.path().join("power"),
            if on { "1\n" } else { "0\n" },
        )
    }

    /// The boot device last set ("pxe", "default", …).
    pub fn boot(&self) -> String {
        read_trimmed(&self.dir.path().join("boot"))
    }

    /// Every `set` the BMC passed to chassis_control, e.g. "power 1",
    /// "boot pxe", "reset 1", "shutdown 1".
    pub fn calls(&self) -> Vec<String> {
        read_trimmed(&self.dir.path().join("calls"))
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for SimBmc {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_trimmed(p: &Path) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// ipmi_sim runs `<script> bmc get power boot` (prints `power:N`,
/// `boot:DEV`) and `<script> bmc set <key> "<value>" …`. Soft shutdown is
/// modelled as an obliging OS that powers off; reset keeps the power on.
fn write_script(path: &Path, dir: &Path) -> io::Result<()> {
    let d = dir.display();
    let script = format!(
        r#"#!/bin/sh
d='{d}'
shift
op=$1
shift
case "$op" in
get)
    for k in "$@"; do
        case "$k" in
        power) echo "power:$(cat "$d/power")" ;;
        boot) echo "boot:$(cat "$d/boot")" ;;
        esac
    done ;;
set)
    while [ $# -ge 2 ]; do
        k=$1; v=$2; shift 2
        echo "$k $v" >> "$d/calls"
        case "$k" in
        power) echo "$v" > "$d/power" ;;
        boot) echo "$v" > "$d/boot" ;;
        shutdown) echo 0 > "$d/power" ;;
        reset) echo 1 > "$d/power" ;;
        esac
    done ;;
esac
exit 0
"#
    );
    let mut f = std::fs::File::create(path)?;
    f.write_all(script.as_bytes())?;
    drop(f);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_fail_with_the_package_names_unless_skipped() {
        let nowhere = Some(std::ffi::OsString::from("/nonexistent"));
        let e = check_tools(nowhere.clone(), None).unwrap_err();
        assert!(e.contains("ipmi_sim and ipmitool"), "{e}");
        assert!(e.contains("apt-get install -y openipmi ipmitool"), "{e}");
        assert_eq!(check_tools(nowhere.clone(), Some("1".into())), Ok(false));
        assert!(check_tools(nowhere, Some("0".into())).is_err());
    }

    #[test]
    fn loopback_addresses_are_distinct() {
        let a = free_loopback_addr(40001).unwrap();
        let b = free_loopback_addr(40001).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.octets()[..2], [127, 77]);
    }
}
