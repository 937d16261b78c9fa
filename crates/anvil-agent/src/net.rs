//! Network bring-up in the ramdisk: find the interface the machine booted
//! from (by MAC), bring it up, get an address by DHCP with busybox `udhcpc`
//! and our own hook script (`udhcpc.script`, written to /run at start).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cmdline::normalise_mac;

const SCRIPT: &str = include_str!("udhcpc.script");
const SCRIPT_PATH: &str = "/run/anvil-udhcpc.script";

/// The interface under `sys_class_net` whose address is `mac`.
pub fn interface_with_mac(sys_class_net: &Path, mac: &str) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys_class_net)
        .ok()?
        .filter_map(Result::ok)
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().find(|n| {
        std::fs::read_to_string(sys_class_net.join(n).join("address"))
            .ok()
            .and_then(|a| normalise_mac(a.trim()))
            .is_some_and(|a| a == mac)
    })
}

/// NICs (interfaces backed by a device), as the inventory sees them.
pub fn physical_interfaces() -> Vec<String> {
    anvil_inventory::physical_interfaces(Path::new("/"))
}

/// The lease udhcpc's hook recorded: `key=value` lines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lease {
    pub ip: String,
    pub mask: String,
    pub router: String,
    pub server: String,
}

pub fn parse_lease(text: &str) -> Option<Lease> {
    let mut l = Lease::default();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "ip" => l.ip = v,
                "mask" => l.mask = v,
                "router" => l.router = v,
                "serverid" => l.server = v,
                _ => {}
            }
        }
    }
    (!l.ip.is_empty()).then_some(l)
}

fn run(prog: &str, args: &[&str]) -> Result<(), String> {
    let o = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{prog} {} failed ({}): {}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// Waits (at most `wait`) for a driver to register the interface with `mac`.
pub fn wait_for_interface(mac: &str, wait: Duration) -> Result<String, String> {
    let sys = Path::new("/sys/class/net");
    let deadline = Instant::now() + wait;
    loop {
        if let Some(i) = interface_with_mac(sys, mac) {
            return Ok(i);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no interface has MAC {mac} (interfaces: {})",
                physical_interfaces().join(", ")
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Brings `iface` up and gets a lease: one udhcpc run of up to ~20 s
/// (10 DISCOVERs, 2 s apart). The caller retries with backoff.
pub fn dhcp(iface: &str) -> Result<Lease, String> {
    let script = PathBuf::from(SCRIPT_PATH);
    if !script.exists() {
        std::fs::write(&script, SCRIPT).map_err(|e| format!("writing {SCRIPT_PATH}: {e}"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {SCRIPT_PATH}: {e}"))?;
    }
    run("ip", &["link", "set", "lo", "up"])?;
    run("ip", &["link", "set", iface, "up"])?;
    let lease_file = format!("/run/anvil-dhcp.{iface}");
    let _ = std::fs::remove_file(&lease_file);
    run(
        "udhcpc",
        &[
            "-i",
            iface,
            "-f",
            "-q",
            "-n",
            "-t",
            "10",
            "-T",
            "2",
            "-s",
            SCRIPT_PATH,
        ],
    )?;
    let text = std::fs::read_to_string(&lease_file)
        .map_err(|e| format!("udhcpc succeeded but wrote no lease ({lease_file}: {e})"))?;
    parse_lease(&text).ok_or_else(|| format!("unreadable lease in {lease_file}: {text:?}"))
}

/// Brings every other physical interface up (no address): LLDP frames are
/// only heard on an interface that is up.
pub fn bring_up_all(except: &str) {
    for i in physical_interfaces() {
        if i != except {
            let _ = run("ip", &["link", "set", &i, "up"]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sys(ifaces: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, mac) in ifaces {
            let p = d.path().join(name);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("address"), format!("{mac}\n")).unwrap();
        }
        d
    }

    #[test]
    fn finds_the_interface_by_mac_in_any_case() {
        let d = fake_sys(&[
            ("lo", "00:00:00:00:00:00"),
            ("ens3", "52:54:00:AA:00:01"),
            ("ens4", "52:54:00:aa:00:02"),
        ]);
        assert_eq!(
            interface_with_mac(d.path(), "52:54:00:aa:00:01").as_deref(),
            Some("ens3")
        );
        assert_eq!(
            interface_with_mac(d.path(), "52:54:00:aa:00:02").as_deref(),
            Some("ens4")
        );
        assert_eq!(interface_with_mac(d.path(), "52:54:00:aa:00:03"), None);
    }

    #[test]
    fn reads_the_lease_the_hook_wrote() {
        let l =
            parse_lease("ip=10.77.1.100\nmask=24\nrouter=10.77.1.1\nserverid=10.77.1.1\n").unwrap();
        assert_eq!(l.ip, "10.77.1.100");
        assert_eq!(l.router, "10.77.1.1");
        assert_eq!(parse_lease("mask=24\n"), None);
    }

    /// The hook script is valid sh and records the lease where `dhcp`
    /// reads it (run with `ip` replaced by a no-op).
    #[test]
    fn hook_script_records_the_lease() {
        let d = tempfile::tempdir().unwrap();
        let script = SCRIPT
            .replace(
                "/run/anvil-dhcp.",
                &format!("{}/lease.", d.path().display()),
            )
            .replace(
                "/etc/resolv.conf",
                &d.path().join("resolv.conf").display().to_string(),
            )
            .replace("ip ", "true ");
        let path = d.path().join("hook");
        std::fs::write(&path, script).unwrap();
        let st = Command::new("sh")
            .arg(&path)
            .arg("bound")
            .env("interface", "eth9")
            .env("ip", "10.0.0.5")
            .env("mask", "16")
            .env("router", "10.0.0.1")
            .env("serverid", "10.0.0.2")
            .env("dns", "10.0.0.53")
            .status()
            .unwrap();
        assert!(st.success());
        let lease =
            parse_lease(&std::fs::read_to_string(d.path().join("lease.eth9")).unwrap()).unwrap();
        assert_eq!(
            lease,
            Lease {
                ip: "10.0.0.5".into(),
                mask: "16".into(),
                router: "10.0.0.1".into(),
                server: "10.0.0.2".into()
            }
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("resolv.conf")).unwrap(),
            "nameserver 10.0.0.53\n"
        );
    }
}
