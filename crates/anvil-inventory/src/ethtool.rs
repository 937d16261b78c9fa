//! The ethtool ioctls inventory needs (SIOCETHTOOL on a datagram socket):
//! ETHTOOL_GDRVINFO for the firmware version, ETHTOOL_GPERMADDR for the
//! burned-in MAC and ETHTOOL_GLINK for the carrier. Linux only; root or
//! CAP_NET_ADMIN is not needed for any of them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
const ETHTOOL_GPERMADDR: u32 = 0x0000_0020;
const ETHTOOL_GLINK: u32 = 0x0000_000a;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// `struct ethtool_drvinfo` from linux/ethtool.h.
#[repr(C)]
struct RawDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `struct ethtool_value`.
#[repr(C)]
struct RawValue {
    cmd: u32,
    data: u32,
}

/// `struct ethtool_perm_addr` followed by room for the address.
#[repr(C)]
struct RawPermAddr {
    cmd: u32,
    size: u32,
    data: [u8; 32],
}

/// What ETHTOOL_GDRVINFO returns, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverInfo {
    pub driver: Option<String>,
    pub firmware_version: Option<String>,
    pub bus_info: Option<String>,
}

pub(crate) struct EthtoolSocket(OwnedFd);

impl EthtoolSocket {
    /// Borrows an already open datagram socket's descriptor.
    pub(crate) fn from_fd(fd: OwnedFd) -> Self {
        EthtoolSocket(fd)
    }

    pub(crate) fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before wrapping.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(EthtoolSocket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ioctl(&self, interface: &str, data: *mut libc::c_void) -> io::Result<()> {
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        let name = interface.as_bytes();
        if name.is_empty() || name.len() >= ifr.ifr_name.len() || name.contains(&0) {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name) {
            *dst = *src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = data.cast();
        // SAFETY: ifr is a valid ifreq whose data pointer refers to a live,
        // correctly sized ethtool structure for the duration of the call.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(crate) fn drvinfo(&self, interface: &str) -> io::Result<DriverInfo> {
        // SAFETY: all-zero is a valid RawDrvinfo.
        let mut info: RawDrvinfo = unsafe { std::mem::zeroed() };
        info.cmd = ETHTOOL_GDRVINFO;
        self.ioctl(interface, (&mut info as *mut RawDrvinfo).cast())?;
        Ok(DriverInfo {
            driver: c_text(&info.driver),
            firmware_version: c_text(&info.fw_version),
            bus_info: c_text(&info.bus_info),
        })
    }

    /// The driver's carrier ("link detected"), read at once from the
    /// device. Unlike IFF_RUNNING, which follows the operational state that
    /// the kernel's linkwatch updates later (a link just set up reads
    /// "unknown", which counts as running), this is never stale.
    pub(crate) fn link_detected(&self, interface: &str) -> io::Result<bool> {
        let mut v = RawValue {
            cmd: ETHTOOL_GLINK,
            data: 0,
        };
        self.ioctl(interface, (&mut v as *mut RawValue).cast())?;
        Ok(v.data != 0)
    }

    pub(crate) fn permanent_mac(&self, interface: &str) -> io::Result<Option<String>> {
        let mut addr = RawPermAddr {
            cmd: ETHTOOL_GPERMADDR,
            size: 32,
            data: [0; 32],
        };
        self.ioctl(interface, (&mut addr as *mut RawPermAddr).cast())?;
        let len = (addr.size as usize).min(addr.data.len());
        let bytes = &addr.data[..len];
        if len != 6 || bytes.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        Ok(Some(crate::lldp::format_mac(bytes)))
    }
}

fn c_text(raw: &[u8]) -> Option<String> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let s = String::from_utf8_lossy(&raw[..end]).trim().to_string();
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On this machine's real interfaces the ioctl must agree with sysfs
    /// about the driver: proof that the structure layout is right.
    #[test]
    fn drvinfo_agrees_with_sysfs_on_this_machine() {
        let sock = EthtoolSocket::open().unwrap();
        let mut checked = 0;
        for entry in std::fs::read_dir("/sys/class/net").unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let Ok(driver) = std::fs::read_link(format!("/sys/class/net/{name}/device/driver"))
            else {
                // Virtual interfaces (veth in a container) still answer,
                // except loopback.
                if name != "lo" {
                    assert!(sock.drvinfo(&name).unwrap().driver.is_some(), "{name}");
                    checked += 1;
                }
                continue;
            };
            let driver = driver.file_name().unwrap().to_string_lossy().into_owned();
            let info = sock.drvinfo(&name).unwrap();
            assert_eq!(info.driver.as_deref(), Some(driver.as_str()), "{name}");
            // Whatever the permanent address is, it is well-formed.
            if let Some(mac) = sock.permanent_mac(&name).unwrap() {
                assert!(crate::is_mac(&mac), "{mac}");
            }
            checked += 1;
        }
        assert!(checked > 0, "no interface to check");
        assert!(sock.drvinfo("nosuch0").is_err());
        assert!(sock.drvinfo("a-name-far-too-long").is_err());
    }
}
