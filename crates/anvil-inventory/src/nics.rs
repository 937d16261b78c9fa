//! NICs: every interface in /sys/class/net backed by a device (loopback,
//! bridges, bonds, VLANs, veths and tunnels have none), with the firmware
//! version from the driver when collecting on the live system.

use crate::Nic;
use crate::sysfs::{Tree, pci_address_of};

pub(crate) fn collect(tree: &mut Tree, live: bool) -> Vec<Nic> {
    let mut nics = Vec::new();
    for name in tree.list("/sys/class/net") {
        let base = tree.path(format!("/sys/class/net/{name}"));
        let device = base.join("device");
        let Some(device_path) = tree.resolve(&device) else {
            continue; // no device: a virtual interface
        };
        let Some(mac) = tree.text_at(&base.join("address")) else {
            continue;
        };
        let operstate = tree.text_at(&base.join("operstate"));
        // carrier reads EINVAL while the interface is administratively down.
        let link_up = tree.flag_at(&base.join("carrier"));
        // speed is -1 (or EINVAL) without link.
        let speed_mbps = tree
            .number_at::<i64>(&base.join("speed"))
            .filter(|&s| s > 0 && link_up == Some(true))
            .and_then(|s| u32::try_from(s).ok());
        let (firmware_version, permanent_mac) = if live {
            live_details(&name)
        } else {
            (None, None)
        };
        let mac = mac.to_ascii_lowercase();
        nics.push(Nic {
            permanent_mac: permanent_mac.filter(|p| *p != mac),
            mac,
            driver: tree.link_name(&device.join("driver")),
            // An interface that is administratively down has no carrier
            // reading: its link is unknown, not down.
            link_up: link_up.or((operstate.as_deref() == Some("up")).then_some(true)),
            speed_mbps,
            pci_address: pci_address_of(&device_path),
            firmware_version,
            mtu: tree.number_at(&base.join("mtu")),
            name,
        });
    }
    nics
}

/// Firmware version and permanent MAC from the driver, by ethtool ioctls.
fn live_details(name: &str) -> (Option<String>, Option<String>) {
    match crate::ethtool::EthtoolSocket::open() {
        Ok(sock) => (
            sock.drvinfo(name)
                .ok()
                .and_then(|d| d.firmware_version)
                .filter(|f| !f.is_empty() && f != "N/A"),
            sock.permanent_mac(name).ok().flatten(),
        ),
        Err(_) => (None, None),
    }
}
