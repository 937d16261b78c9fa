//! The network a deployment's cloud-init `network-config` describes.
//!
//! Two sources, chosen per machine at deploy start (and for the cloud-init
//! view), never on the boot hot path:
//!
//! * **NetBox**, when the sync is configured and the machine is linked to a
//!   device: the device's interfaces (LAGs become bonds of their members,
//!   virtual interfaces with a parent become VLANs), the IP addresses
//!   assigned to them, and the device's config context for what NetBox does
//!   not model (`anvil.gateway4`/`gateway6`, `anvil.routes`, `anvil.dns`,
//!   `anvil.bonds`; `docs/cloud-init.md`). [`from_netbox`] is the pure
//!   translation; a contradiction (an address on an interface whose MAC the
//!   machine does not have, a LAG without members, a sub-interface on a
//!   trunk that does not carry its VLAN, …) is an error that fails the
//!   deploy request (422) before any disk is touched.
//! * **Anvil's inventory** otherwise ([`from_inventory`]): DHCPv4 on the NIC
//!   the machine network-boots from, and on every other interface with a
//!   reserved IPv4 address (Anvil's DHCP hands out the reservation, so the
//!   installed system gets the same address without a static copy that
//!   could drift from it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anvil_cloudinit::{
    Bond, BondMode, Cidr, Dns, Ethernet, HashPolicy, IpConfig, LacpRate, NetworkConfig, Route,
    Vlan, normalize_mac, stable_name,
};
use anvil_inventory::HardwareFacts;
use anvil_netbox::{NbNetInterface, NbNetwork};
use anvil_types::{Interface, Machine};
use serde::Deserialize;

use crate::{App, Error, Result};

/// The part of a device's config context under the key `anvil` that the
/// network reads. Unknown keys directly under `anvil` are left for other
/// uses; inside these objects a misspelt key is an error.
#[derive(Debug, Default, Deserialize)]
struct AnvilContext {
    #[serde(default)]
    gateway4: Option<Ipv4Addr>,
    #[serde(default)]
    gateway6: Option<Ipv6Addr>,
    #[serde(default)]
    routes: Vec<RouteSpec>,
    #[serde(default)]
    dns: Dns,
    /// Per LAG (by its NetBox name): what the bond runs. NetBox models a
    /// LAG but not its protocol; without an entry a LAG is 802.3ad (LACP).
    #[serde(default)]
    bonds: BTreeMap<String, BondSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    to: Cidr,
    via: IpAddr,
    #[serde(default)]
    metric: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BondSpec {
    #[serde(default)]
    mode: Option<BondMode>,
    #[serde(default)]
    lacp_rate: Option<LacpRate>,
    #[serde(default)]
    transmit_hash_policy: Option<HashPolicy>,
    #[serde(default)]
    mii_monitor_interval_ms: Option<u32>,
    /// active-backup: the NetBox name of the preferred member.
    #[serde(default)]
    primary: Option<String>,
}

/// The machine's NICs by normalised MAC → the name the ramdisk saw. With
/// hardware facts, the NICs commissioning found (what the machine really
/// has: an imported machine's interfaces are NetBox's own claim); without,
/// Anvil's interfaces, unnamed.
fn machine_macs(ifaces: &[Interface], facts: Option<&HardwareFacts>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    match facts.filter(|f| !f.nics.is_empty()) {
        Some(f) => {
            for n in &f.nics {
                for m in [Some(&n.mac), n.permanent_mac.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    if let Ok(mac) = normalize_mac(m) {
                        out.insert(mac, n.name.clone());
                    }
                }
            }
        }
        None => {
            for i in ifaces {
                if let Ok(mac) = normalize_mac(&i.mac.to_string()) {
                    out.insert(mac, String::new());
                }
            }
        }
    }
    out
}

fn boot_mac(ifaces: &[Interface]) -> Option<String> {
    ifaces
        .iter()
        .find(|i| i.pxe)
        .or_else(|| ifaces.first())
        .and_then(|i| normalize_mac(&i.mac.to_string()).ok())
}

/// Anvil's own view: DHCPv4 on the boot NIC and on every interface with a
/// reserved IPv4 address; NICs without either are left out (the installed
/// system does not wait for links that may not be cabled).
pub fn from_inventory(
    ifaces: &[Interface],
    facts: Option<&HardwareFacts>,
) -> std::result::Result<NetworkConfig, String> {
    let boot = boot_mac(ifaces).ok_or_else(|| {
        "the machine has no network interface; cloud-init's network-config needs the NIC it boots from"
            .to_string()
    })?;
    let names = machine_macs(ifaces, facts);
    let mut net = NetworkConfig::default();
    let mut add = |mac: String| {
        if net.ethernets.iter().any(|e| e.mac == mac) {
            return;
        }
        let hint = names.get(&mac).cloned().unwrap_or_default();
        net.ethernets.push(Ethernet {
            name: stable_name(&hint, &mac),
            mac,
            mtu: None,
            ip: IpConfig::dhcp4(),
        });
    };
    add(boot);
    for i in ifaces.iter().filter(|i| i.ipv4.is_some()) {
        if let Ok(mac) = normalize_mac(&i.mac.to_string()) {
            add(mac);
        }
    }
    Ok(net)
}

/// NetBox's view of the device, checked against the machine's NICs.
pub fn from_netbox(
    ifaces: &[Interface],
    facts: Option<&HardwareFacts>,
    nb: &NbNetwork,
) -> std::result::Result<NetworkConfig, String> {
    let ctx: AnvilContext = match nb.config_context.get("anvil") {
        None | Some(serde_json::Value::Null) => AnvilContext::default(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            format!(
                "NetBox device {}: config context key \"anvil\": {e}",
                nb.device_id
            )
        })?,
    };
    let known = machine_macs(ifaces, facts);
    // Management-only interfaces are the BMC's; disabled ones are not used.
    let usable: BTreeMap<u64, &NbNetInterface> = nb
        .interfaces
        .iter()
        .filter(|i| !i.mgmt_only && i.enabled)
        .map(|i| (i.id, i))
        .collect();
    let mut addrs: BTreeMap<u64, IpConfig> = BTreeMap::new();
    for ip in &nb.addresses {
        let Some(iface) = usable.get(&ip.interface) else {
            continue;
        };
        let cidr: Cidr = ip
            .address
            .parse()
            .map_err(|e| format!("NetBox IP address {} on {}: {e}", ip.address, iface.name))?;
        // reserved, deprecated, slaac: nothing to configure on the host.
        if !matches!(ip.status.as_str(), "active" | "dhcp") {
            continue;
        }
        let cfg = addrs.entry(iface.id).or_default();
        match (ip.status.as_str(), cidr.addr.is_ipv4()) {
            ("active", _) => cfg.addresses.push(cidr),
            // NetBox records the address a DHCP server hands out.
            (_, true) => cfg.dhcp4 = true,
            (_, false) => cfg.dhcp6 = true,
        }
    }
    // The MAC of a physical interface Anvil's NICs have.
    let nic_mac = |i: &NbNetInterface, why: &str| -> std::result::Result<String, String> {
        if i.macs.is_empty() {
            return Err(format!(
                "NetBox interface {} {why} but has no MAC address",
                i.name
            ));
        }
        i.macs
            .iter()
            .filter_map(|m| normalize_mac(m).ok())
            .find(|m| known.contains_key(m))
            .ok_or_else(|| {
                format!(
                    "NetBox interface {} {why} but its MAC {} is not one of the machine's NICs",
                    i.name,
                    i.macs.join(", ")
                )
            })
    };
    let mut ethernets: BTreeMap<u64, Ethernet> = BTreeMap::new();
    let ethernet = |i: &NbNetInterface, mac: String, ip: IpConfig| Ethernet {
        name: stable_name(known.get(&mac).map(String::as_str).unwrap_or(""), &mac),
        mac,
        mtu: i.mtu,
        ip,
    };
    let mut bonds: BTreeMap<u64, Bond> = BTreeMap::new();
    let mut vlans = Vec::new();
    // Bonds first: their members are ethernets without addresses.
    for lag in usable.values().filter(|i| i.is_lag()) {
        let members: Vec<&NbNetInterface> = usable
            .values()
            .filter(|m| m.lag == Some(lag.id))
            .copied()
            .collect();
        let ip = addrs.remove(&lag.id).unwrap_or_default();
        let has_vlans = usable
            .values()
            .any(|v| v.parent == Some(lag.id) && addrs.contains_key(&v.id));
        if members.is_empty() {
            if !ip.is_empty() || has_vlans {
                return Err(format!(
                    "NetBox LAG {} carries addresses or VLANs but has no member interfaces",
                    lag.name
                ));
            }
            continue;
        }
        let spec = ctx.bonds.get(&lag.name);
        let mut member_macs = Vec::new();
        let mut primary = None;
        for m in &members {
            if m.is_lag() || m.is_virtual() {
                return Err(format!(
                    "NetBox interface {} is a member of LAG {} but is not a physical interface",
                    m.name, lag.name
                ));
            }
            if addrs.contains_key(&m.id) {
                return Err(format!(
                    "NetBox interface {} has IP addresses but is a member of LAG {}; assign them to the LAG",
                    m.name, lag.name
                ));
            }
            let mac = nic_mac(m, &format!("is a member of LAG {}", lag.name))?;
            if spec.and_then(|s| s.primary.as_deref()) == Some(m.name.as_str()) {
                primary = Some(mac.clone());
            }
            member_macs.push(mac.clone());
            ethernets.insert(m.id, ethernet(m, mac, IpConfig::default()));
        }
        if let Some(p) = spec.and_then(|s| s.primary.as_deref())
            && primary.is_none()
        {
            return Err(format!(
                "config context anvil.bonds.{}.primary: {p} is not a member of that LAG",
                lag.name
            ));
        }
        bonds.insert(
            lag.id,
            Bond {
                name: lag.name.clone(),
                members: member_macs,
                mode: spec.and_then(|s| s.mode).unwrap_or(BondMode::Lacp),
                lacp_rate: spec.and_then(|s| s.lacp_rate),
                mii_monitor_interval_ms: spec.and_then(|s| s.mii_monitor_interval_ms),
                transmit_hash_policy: spec.and_then(|s| s.transmit_hash_policy),
                primary,
                mtu: lag.mtu,
                ip,
            },
        );
    }
    for name in ctx.bonds.keys() {
        if !usable.values().any(|i| i.is_lag() && &i.name == name) {
            return Err(format!(
                "config context anvil.bonds.{name}: the device has no LAG interface of that name"
            ));
        }
    }
    // Physical interfaces with addresses of their own.
    for i in usable
        .values()
        .filter(|i| !i.is_lag() && !i.is_virtual() && i.kind != "bridge")
    {
        let Some(ip) = addrs.remove(&i.id) else {
            continue;
        };
        if i.lag.is_some() {
            // A member of a LAG that is disabled or management-only.
            return Err(format!(
                "NetBox interface {} has IP addresses and is a member of a LAG",
                i.name
            ));
        }
        let mac = nic_mac(i, "has IP addresses")?;
        ethernets.insert(i.id, ethernet(i, mac, ip));
    }
    // Sub-interfaces: a virtual interface with a parent is a VLAN on it.
    for v in usable.values().filter(|i| i.is_virtual()) {
        let ip = addrs.remove(&v.id).unwrap_or_default();
        let Some(parent_id) = v.parent else {
            if !ip.is_empty() {
                return Err(format!(
                    "NetBox virtual interface {} has IP addresses but no parent interface",
                    v.name
                ));
            }
            continue;
        };
        if ip.is_empty() {
            continue;
        }
        let Some(parent) = usable.get(&parent_id) else {
            return Err(format!(
                "NetBox interface {}'s parent is disabled, management-only or not on the device",
                v.name
            ));
        };
        let vid = match (v.untagged_vlan, v.tagged_vlans.as_slice()) {
            (Some(vid), _) => vid,
            (None, [vid]) => *vid,
            _ => {
                return Err(format!(
                    "NetBox interface {} is a sub-interface of {} but names no VLAN (set its untagged VLAN)",
                    v.name, parent.name
                ));
            }
        };
        if parent.mode.as_deref() == Some("tagged")
            && !parent.tagged_vlans.contains(&vid)
            && parent.untagged_vlan != Some(vid)
        {
            return Err(format!(
                "NetBox interface {} uses VLAN {vid} but its parent {} does not carry it",
                v.name, parent.name
            ));
        }
        let link = if let Some(b) = bonds.get(&parent_id) {
            b.name.clone()
        } else if parent.is_lag() || parent.is_virtual() {
            return Err(format!(
                "NetBox interface {}'s parent {} is neither a NIC nor a LAG with members",
                v.name, parent.name
            ));
        } else if parent.lag.is_some() {
            return Err(format!(
                "NetBox interface {}'s parent {} is a LAG member; put the VLAN on the LAG",
                v.name, parent.name
            ));
        } else {
            match ethernets.entry(parent_id) {
                std::collections::btree_map::Entry::Occupied(e) => e.get().name.clone(),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    let mac = nic_mac(
                        parent,
                        &format!("is the parent of VLAN interface {}", v.name),
                    )?;
                    slot.insert(ethernet(parent, mac, IpConfig::default()))
                        .name
                        .clone()
                }
            }
        };
        vlans.push(Vlan {
            id: vid,
            link,
            // NetBox's name when the kernel can take it, else the default.
            name: (v.name.len() <= 15).then(|| v.name.clone()),
            mtu: v.mtu,
            ip,
        });
    }
    // What is left sits on interfaces of another kind (bridge, wireless, …).
    if let Some(id) = addrs.keys().next() {
        return Err(format!(
            "NetBox interface {} ({}) has IP addresses but is neither a NIC, a LAG nor a VLAN sub-interface",
            usable[id].name, usable[id].kind
        ));
    }
    let mut net = NetworkConfig {
        ethernets: ethernets.into_values().collect(),
        bonds: bonds.into_values().collect(),
        vlans,
        dns: ctx.dns,
    };
    // The boot NIC keeps DHCP unless NetBox configures it (it booted that
    // way, untagged, so it stays reachable the same way).
    if let Some(boot) = boot_mac(ifaces) {
        let bonded = net.bonds.iter().any(|b| b.members.contains(&boot));
        match net.ethernets.iter_mut().find(|e| e.mac == boot) {
            Some(e) if !bonded && e.ip.is_empty() => e.ip = IpConfig::dhcp4(),
            Some(_) => {}
            None if !bonded => {
                let hint = known.get(&boot).cloned().unwrap_or_default();
                net.ethernets.push(Ethernet {
                    name: stable_name(&hint, &boot),
                    mac: boot,
                    mtu: None,
                    ip: IpConfig::dhcp4(),
                });
            }
            None => {}
        }
    }
    if let Some(gw) = ctx.gateway4 {
        l3_for(&mut net, IpAddr::V4(gw), "anvil.gateway4")?.gateway4 = Some(gw);
    }
    if let Some(gw) = ctx.gateway6 {
        // A link-local router is on every link: give it to the device with
        // IPv6 addresses.
        let ip = l3_for(&mut net, IpAddr::V6(gw), "anvil.gateway6")?;
        ip.gateway6 = Some(gw);
    }
    for r in ctx.routes {
        let ip = l3_for(&mut net, r.via, &format!("anvil.routes (to {})", r.to))?;
        ip.routes.push(Route {
            to: r.to,
            via: r.via,
            metric: r.metric,
        });
    }
    net.validated().map_err(|e| {
        format!(
            "the network NetBox describes for device {} is not valid: {e}",
            nb.device_id
        )
    })?;
    Ok(net)
}

/// The layer-3 config of the device whose subnet holds `via` (an IPv6
/// link-local `via`: the first device with IPv6 addresses).
fn l3_for<'a>(
    net: &'a mut NetworkConfig,
    via: IpAddr,
    key: &str,
) -> std::result::Result<&'a mut IpConfig, String> {
    let link_local = matches!(via, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
    let fits = |ip: &IpConfig| {
        ip.addresses.iter().any(|a| {
            if link_local {
                a.addr.is_ipv6()
            } else {
                a.contains(via)
            }
        })
    };
    let devices = net
        .ethernets
        .iter_mut()
        .map(|e| &mut e.ip)
        .chain(net.bonds.iter_mut().map(|b| &mut b.ip))
        .chain(net.vlans.iter_mut().map(|v| &mut v.ip));
    let mut seen = BTreeSet::new();
    for ip in devices {
        if fits(ip) {
            return Ok(ip);
        }
        seen.extend(ip.addresses.iter().map(|a| a.to_string()));
    }
    Err(format!(
        "config context {key}: {via} is in none of the subnets NetBox assigns to the machine ({})",
        if seen.is_empty() {
            "it has no static addresses".to_string()
        } else {
            seen.into_iter().collect::<Vec<_>>().join(", ")
        }
    ))
}

impl App {
    /// The network of machine `m` for its cloud-init data: NetBox's when the
    /// sync is configured and the machine is linked to a device, else
    /// Anvil's own (see the module docs). A NetBox that cannot be read fails
    /// the request (502) rather than deploying without the addressing the
    /// operator put there.
    pub(crate) async fn deploy_network(
        &self,
        m: &Machine,
        facts: Option<&HardwareFacts>,
    ) -> Result<NetworkConfig> {
        if let Some(client) = self.netbox_client()
            && let Some(&device) = self.store.netbox_links().await?.get(&m.id)
        {
            match client.device_network(device).await {
                Ok(Some(nb)) => {
                    return from_netbox(&m.interfaces, facts, &nb)
                        .map_err(|msg| Error::invalid("network", msg));
                }
                Ok(None) => tracing::warn!(
                    machine = %m.hostname,
                    device,
                    "linked NetBox device is gone; using Anvil's own network data"
                ),
                Err(e) => return Err(Error::Netbox(crate::error_chain(&e))),
            }
        }
        from_inventory(&m.interfaces, facts).map_err(|msg| Error::invalid("machine", msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anvil_inventory::Nic;
    use anvil_netbox::NbIpAddress;
    use serde_json::json;
    use uuid::Uuid;

    const BOOT: &str = "02:00:00:00:01:01";
    const SECOND: &str = "02:00:00:00:01:02";
    const THIRD: &str = "02:00:00:00:01:03";

    fn iface(mac: &str, pxe: bool, ipv4: Option<&str>) -> Interface {
        Interface {
            id: Uuid::now_v7(),
            mac: mac.parse().unwrap(),
            name: String::new(),
            pxe,
            ipv4: ipv4.map(str::to_string),
        }
    }

    fn machine() -> Vec<Interface> {
        vec![
            iface(BOOT, true, None),
            iface(SECOND, false, None),
            iface(THIRD, false, None),
        ]
    }

    fn facts() -> HardwareFacts {
        let nic = |name: &str, mac: &str| Nic {
            name: name.into(),
            mac: mac.into(),
            ..Nic::default()
        };
        HardwareFacts {
            nics: vec![
                nic("enp1s0", BOOT),
                nic("enp2s0", SECOND),
                nic("enp3s0", THIRD),
            ],
            ..HardwareFacts::default()
        }
    }

    fn nb_iface(id: u64, name: &str, kind: &str) -> NbNetInterface {
        NbNetInterface {
            id,
            name: name.into(),
            kind: kind.into(),
            enabled: true,
            ..NbNetInterface::default()
        }
    }

    fn ip(id: u64, address: &str, interface: u64) -> NbIpAddress {
        NbIpAddress {
            id,
            address: address.into(),
            status: "active".into(),
            interface,
        }
    }

    /// bond0 = LAG of eth0 + eth1 (LACP, fast), 10.0.0.5/24 on it, VLAN 100
    /// as sub-interface bond0.100 with 192.168.100.5/24 and an IPv6
    /// address, eth2 untouched, a BMC interface with its own IP.
    fn netbox() -> NbNetwork {
        let mut bond = nb_iface(10, "bond0", "lag");
        bond.mtu = Some(9000);
        bond.mode = Some("tagged".into());
        bond.tagged_vlans = vec![100, 200];
        let mut eth0 = nb_iface(11, "eth0", "1000base-t");
        eth0.lag = Some(10);
        eth0.macs = vec![BOOT.to_uppercase()];
        let mut eth1 = nb_iface(12, "eth1", "1000base-t");
        eth1.lag = Some(10);
        eth1.macs = vec![SECOND.into()];
        let mut eth2 = nb_iface(13, "eth2", "1000base-t");
        eth2.macs = vec![THIRD.into()];
        let mut sub = nb_iface(14, "bond0.100", "virtual");
        sub.parent = Some(10);
        sub.mode = Some("access".into());
        sub.untagged_vlan = Some(100);
        let mut bmc = nb_iface(15, "bmc", "1000base-t");
        bmc.mgmt_only = true;
        bmc.macs = vec!["02:01:00:00:00:01".into()];
        NbNetwork {
            device_id: 7,
            interfaces: vec![bond, eth0, eth1, eth2, sub, bmc],
            addresses: vec![
                ip(1, "10.0.0.5/24", 10),
                ip(2, "192.168.100.5/24", 14),
                ip(3, "2001:db8:100::5/64", 14),
                ip(4, "10.128.0.1/16", 15),
            ],
            config_context: json!({"anvil": {
                "gateway4": "10.0.0.1",
                "routes": [{"to": "172.16.0.0/12", "via": "192.168.100.254", "metric": 50}],
                "dns": {"nameservers": ["10.0.0.53", "2001:db8::53"], "search": ["example.com"]},
                "bonds": {"bond0": {"lacp_rate": "fast", "transmit_hash_policy": "layer3+4"}},
                "something_else": {"left": "alone"}
            }}),
        }
    }

    #[test]
    fn lacp_bond_with_tagged_vlan_static_addresses_routes_and_dns() {
        let net = from_netbox(&machine(), Some(&facts()), &netbox()).unwrap();
        // Members by MAC, named as the ramdisk saw them, without addresses;
        // eth2 carries nothing and the BMC port is not the host's.
        let eths: Vec<(&str, &str, bool)> = net
            .ethernets
            .iter()
            .map(|e| (e.mac.as_str(), e.name.as_str(), e.ip.is_empty()))
            .collect();
        assert_eq!(eths, vec![(BOOT, "enp1s0", true), (SECOND, "enp2s0", true)]);
        assert_eq!(net.bonds.len(), 1);
        let b = &net.bonds[0];
        assert_eq!(b.name, "bond0");
        assert_eq!(b.members, vec![BOOT, SECOND]);
        assert_eq!(b.mode, BondMode::Lacp);
        assert_eq!(b.lacp_rate, Some(LacpRate::Fast));
        assert_eq!(b.transmit_hash_policy, Some(HashPolicy::Layer3And4));
        assert_eq!(b.mtu, Some(9000));
        assert_eq!(b.ip.addresses, vec!["10.0.0.5/24".parse().unwrap()]);
        assert_eq!(b.ip.gateway4, Some("10.0.0.1".parse().unwrap()));
        assert!(!b.ip.dhcp4, "the boot NIC is bonded: no DHCP on it");
        assert_eq!(net.vlans.len(), 1);
        let v = &net.vlans[0];
        assert_eq!((v.id, v.link.as_str()), (100, "bond0"));
        assert_eq!(v.name.as_deref(), Some("bond0.100"));
        assert_eq!(
            v.ip.addresses,
            vec![
                "192.168.100.5/24".parse().unwrap(),
                "2001:db8:100::5/64".parse().unwrap()
            ]
        );
        assert_eq!(
            v.ip.routes,
            vec![Route {
                to: "172.16.0.0/12".parse().unwrap(),
                via: "192.168.100.254".parse().unwrap(),
                metric: Some(50),
            }]
        );
        assert_eq!(net.dns.nameservers.len(), 2);
        assert_eq!(net.dns.search, vec!["example.com"]);
        // And it renders as netplan v2.
        let v2 = anvil_cloudinit::network_config(&net).unwrap();
        assert_eq!(v2["version"], 2);
        assert_eq!(v2["bonds"]["bond0"]["parameters"]["mode"], "802.3ad");
        assert_eq!(v2["vlans"]["bond0.100"]["id"], 100);
    }

    #[test]
    fn boot_nic_outside_netbox_config_keeps_dhcp() {
        let mut nb = netbox();
        // eth0 (the boot NIC) leaves the LAG; eth2 joins it.
        nb.interfaces[1].lag = None;
        nb.interfaces[3].lag = Some(10);
        let net = from_netbox(&machine(), Some(&facts()), &nb).unwrap();
        let boot = net.ethernets.iter().find(|e| e.mac == BOOT).unwrap();
        assert!(boot.ip.dhcp4);
        assert_eq!(net.bonds[0].members, vec![SECOND, THIRD]);
    }

    #[test]
    fn active_backup_with_primary_from_config_context() {
        let mut nb = netbox();
        nb.config_context["anvil"]["bonds"] =
            json!({"bond0": {"mode": "active-backup", "primary": "eth1"}});
        // A reserved address on a member configures nothing (no error).
        let mut reserved = ip(9, "10.0.0.99/24", 12);
        reserved.status = "reserved".into();
        nb.addresses.push(reserved);
        let net = from_netbox(&machine(), Some(&facts()), &nb).unwrap();
        assert_eq!(net.bonds[0].mode, BondMode::ActiveBackup);
        assert_eq!(net.bonds[0].primary.as_deref(), Some(SECOND));
    }

    /// A VLAN straight on a NIC (not bonded): the NIC is listed without
    /// addresses of its own; as the boot NIC it keeps DHCP (untagged). An
    /// IP with NetBox status `dhcp` is DHCP on its device; a link-local
    /// IPv6 gateway goes to the device with IPv6 addresses.
    #[test]
    fn vlan_on_a_nic_dhcp_status_and_link_local_gateway() {
        let mut eth0 = nb_iface(1, "eth0", "1000base-t");
        eth0.macs = vec![BOOT.into()];
        eth0.mode = Some("tagged".into());
        eth0.tagged_vlans = vec![30];
        let mut eth1 = nb_iface(2, "eth1", "1000base-t");
        eth1.macs = vec![SECOND.into()];
        let mut sub = nb_iface(3, "eth0.30", "virtual");
        sub.parent = Some(1);
        sub.tagged_vlans = vec![30];
        let mut dhcp = ip(2, "10.5.0.9/24", 2);
        dhcp.status = "dhcp".into();
        let mut reserved = ip(3, "10.5.0.10/24", 2);
        reserved.status = "reserved".into();
        let nb = NbNetwork {
            device_id: 3,
            interfaces: vec![eth0, eth1, sub],
            addresses: vec![ip(1, "2001:db8:30::9/64", 3), dhcp, reserved],
            config_context: json!({"anvil": {"gateway6": "fe80::1"}}),
        };
        let net = from_netbox(&machine(), Some(&facts()), &nb).unwrap();
        let boot = net.ethernets.iter().find(|e| e.mac == BOOT).unwrap();
        assert_eq!(boot.name, "enp1s0");
        assert!(boot.ip.dhcp4 && boot.ip.addresses.is_empty());
        let second = net.ethernets.iter().find(|e| e.mac == SECOND).unwrap();
        assert!(
            second.ip.dhcp4 && second.ip.addresses.is_empty(),
            "{second:?}"
        );
        assert_eq!(net.vlans.len(), 1);
        let v = &net.vlans[0];
        assert_eq!((v.id, v.link.as_str()), (30, "enp1s0"));
        assert_eq!(v.name.as_deref(), Some("eth0.30"));
        assert_eq!(v.ip.gateway6, Some("fe80::1".parse().unwrap()));
        anvil_cloudinit::network_config(&net).unwrap();
    }

    fn err_of(nb: &NbNetwork) -> String {
        from_netbox(&machine(), Some(&facts()), nb).unwrap_err()
    }

    #[test]
    fn contradictions_are_errors() {
        // An address on a NIC whose MAC the machine does not have.
        let mut nb = netbox();
        nb.interfaces[3].macs = vec!["02:99:00:00:00:01".into()];
        nb.addresses.push(ip(9, "10.1.0.5/24", 13));
        let e = err_of(&nb);
        assert!(
            e.contains("eth2") && e.contains("not one of the machine's NICs"),
            "{e}"
        );

        // Anvil's interface list (for an imported machine, NetBox's own
        // claim) does not count when commissioning saw other NICs.
        let mut nb = netbox();
        nb.interfaces[3].macs = vec!["02:99:00:00:00:02".into()];
        nb.addresses.push(ip(9, "10.1.0.5/24", 13));
        let mut ifaces = machine();
        ifaces.push(iface("02:99:00:00:00:02", false, None));
        let e = from_netbox(&ifaces, Some(&facts()), &nb).unwrap_err();
        assert!(e.contains("not one of the machine's NICs"), "{e}");

        // A LAG member without a MAC in NetBox.
        let mut nb = netbox();
        nb.interfaces[2].macs.clear();
        let e = err_of(&nb);
        assert!(
            e.contains("eth1") && e.contains("member of LAG bond0") && e.contains("no MAC"),
            "{e}"
        );

        // A LAG with addresses but no members.
        let mut nb = netbox();
        nb.interfaces[1].lag = None;
        nb.interfaces[2].lag = None;
        let e = err_of(&nb);
        assert!(e.contains("LAG bond0") && e.contains("no member"), "{e}");

        // A member with addresses of its own.
        let mut nb = netbox();
        nb.addresses.push(ip(9, "10.2.0.5/24", 12));
        let e = err_of(&nb);
        assert!(
            e.contains("eth1") && e.contains("assign them to the LAG"),
            "{e}"
        );

        // A sub-interface on a trunk that does not carry its VLAN.
        let mut nb = netbox();
        nb.interfaces[0].tagged_vlans = vec![200];
        let e = err_of(&nb);
        assert!(
            e.contains("VLAN 100") && e.contains("does not carry it"),
            "{e}"
        );

        // A sub-interface that names no VLAN.
        let mut nb = netbox();
        nb.interfaces[4].untagged_vlan = None;
        let e = err_of(&nb);
        assert!(e.contains("names no VLAN"), "{e}");

        // A gateway outside every assigned subnet.
        let mut nb = netbox();
        nb.config_context["anvil"]["gateway4"] = json!("10.9.9.1");
        let e = err_of(&nb);
        assert!(
            e.contains("anvil.gateway4") && e.contains("10.9.9.1"),
            "{e}"
        );

        // A route whose next hop is on no link.
        let mut nb = netbox();
        nb.config_context["anvil"]["routes"] = json!([{"to": "172.16.0.0/12", "via": "10.99.0.1"}]);
        let e = err_of(&nb);
        assert!(e.contains("anvil.routes") && e.contains("10.99.0.1"), "{e}");

        // A misspelt key inside the anvil config context.
        let mut nb = netbox();
        nb.config_context["anvil"]["routes"] = json!([{"to": "172.16.0.0/12", "gw": "10.0.0.1"}]);
        let e = err_of(&nb);
        assert!(e.contains("config context") && e.contains("gw"), "{e}");

        // Bond settings for a LAG the device does not have.
        let mut nb = netbox();
        nb.config_context["anvil"]["bonds"] = json!({"bond9": {"mode": "802.3ad"}});
        let e = err_of(&nb);
        assert!(e.contains("bond9"), "{e}");

        // An IP on a bridge.
        let mut nb = netbox();
        nb.interfaces.push(nb_iface(20, "br0", "bridge"));
        nb.addresses.push(ip(9, "10.3.0.5/24", 20));
        let e = err_of(&nb);
        assert!(e.contains("br0") && e.contains("bridge"), "{e}");

        // Two default routes (gateway4 plus a 0.0.0.0/0 route): the
        // cloud-init model's own validation, reported with the device.
        let mut nb = netbox();
        nb.config_context["anvil"]["routes"] = json!([{"to": "0.0.0.0/0", "via": "192.168.100.1"}]);
        let e = err_of(&nb);
        assert!(e.contains("device 7 is not valid"), "{e}");
    }

    #[test]
    fn inventory_fallback_is_dhcp_on_boot_nic_and_reserved_interfaces() {
        let ifaces = vec![
            iface(BOOT, true, None),
            iface(SECOND, false, Some("10.0.0.7")),
            iface(THIRD, false, None),
        ];
        let net = from_inventory(&ifaces, Some(&facts())).unwrap();
        let got: Vec<(&str, &str, bool)> = net
            .ethernets
            .iter()
            .map(|e| (e.mac.as_str(), e.name.as_str(), e.ip.dhcp4))
            .collect();
        assert_eq!(got, vec![(BOOT, "enp1s0", true), (SECOND, "enp2s0", true)]);
        // Without facts the kernel-free MAC name is used.
        let net = from_inventory(&ifaces[..1], None).unwrap();
        assert_eq!(net.ethernets[0].name, "enx020000000101");
        assert!(from_inventory(&[], None).is_err());
    }
}
