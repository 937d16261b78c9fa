//! Which interfaces have a link: a freshly booted ramdisk has every NIC
//! down, and a down NIC reports no carrier, so "connected" can only be
//! known after bringing the NICs up and giving autonegotiation a moment.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::Error;
use crate::listen::{interface_flags, set_up};
use crate::sysfs::Tree;

/// Network interfaces backed by a device (NICs) in `root`'s
/// /sys/class/net, in natural order; loopback, bridges, bonds, VLANs, veths
/// and tunnels have no device and are left out.
pub fn physical_interfaces(root: &Path) -> Vec<String> {
    let mut tree = Tree::new(root);
    tree.list("/sys/class/net")
        .into_iter()
        .filter(|name| tree.path(format!("/sys/class/net/{name}/device")).exists())
        .collect()
}

/// Bring every interface of `candidates` up and wait up to `settle` for
/// carrier (IFF_RUNNING); returns those that have it, in the given order,
/// as soon as all have it or when `settle` ends. Real NICs need a few
/// seconds of autonegotiation; virtual ones are immediate. Needs
/// CAP_NET_ADMIN; fails on an interface it cannot bring up.
pub fn connected_interfaces(candidates: &[String], settle: Duration) -> Result<Vec<String>, Error> {
    // SAFETY: plain socket(2), checked below; any socket serves the ioctls.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Error::Socket {
            op: "open control socket",
            interface: candidates.join(","),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: raw is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    for name in candidates {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(Error::BadInterface {
                interface: name.clone(),
                reason: "name empty or too long",
            });
        }
        set_up(&fd, name)?;
    }
    let ethtool =
        crate::ethtool::EthtoolSocket::from_fd(fd.try_clone().map_err(|source| Error::Socket {
            op: "duplicate control socket",
            interface: candidates.join(","),
            source,
        })?);
    let deadline = Instant::now() + settle;
    loop {
        let mut running = Vec::new();
        for name in candidates {
            let flags = interface_flags(&fd, name)?;
            // The carrier straight from the driver; IFF_RUNNING only where a
            // driver has no ethtool link query (it can lag behind: a link
            // just set up reads "unknown", which counts as running).
            let up = match ethtool.link_detected(name) {
                Ok(link) => link && flags & libc::IFF_UP as libc::c_short != 0,
                Err(_) => flags & libc::IFF_RUNNING as libc::c_short != 0,
            };
            if up {
                running.push(name.clone());
            }
        }
        if running.len() == candidates.len() || Instant::now() >= deadline {
            return Ok(running);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
