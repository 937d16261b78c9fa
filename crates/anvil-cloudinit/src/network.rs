//! The network description a deployment is rendered from (interfaces by MAC,
//! bonds, VLANs, addresses, routes, DNS), its validation, and the default built
//! from the machine's hardware facts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use anvil_inventory::HardwareFacts;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::context::validate_domain;

/// A machine's network as Anvil knows it: from the hardware facts (NICs and
/// their MACs), Anvil's own data (the boot NIC) and, when synced, NetBox
/// (addresses, VLANs). An empty config renders no `network-config`, which
/// leaves cloud-init to its fallback (DHCP on the first NIC).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    #[serde(default)]
    pub ethernets: Vec<Ethernet>,
    #[serde(default)]
    pub bonds: Vec<Bond>,
    #[serde(default)]
    pub vlans: Vec<Vlan>,
    #[serde(default)]
    pub dns: Dns,
}

/// A physical NIC, matched by MAC in the installed system and given `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ethernet {
    pub mac: String,
    /// Name hint (usually the name the ramdisk saw). Names in the kernel's
    /// `ethN` namespace become `enx<mac>` (see [`stable_name`]).
    pub name: String,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default, flatten)]
    pub ip: IpConfig,
}

/// Layer-3 settings of one device (NIC, bond or VLAN).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpConfig {
    #[serde(default)]
    pub dhcp4: bool,
    #[serde(default)]
    pub dhcp6: bool,
    /// Static addresses in CIDR form.
    #[serde(default)]
    pub addresses: Vec<Cidr>,
    #[serde(default)]
    pub gateway4: Option<Ipv4Addr>,
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    #[serde(default)]
    pub routes: Vec<Route>,
}

impl IpConfig {
    pub fn is_empty(&self) -> bool {
        !self.dhcp4
            && !self.dhcp6
            && self.addresses.is_empty()
            && self.gateway4.is_none()
            && self.gateway6.is_none()
            && self.routes.is_empty()
    }

    pub fn dhcp4() -> Self {
        Self {
            dhcp4: true,
            ..Self::default()
        }
    }
}

/// An address with its prefix length, e.g. `10.0.0.5/24` or `2001:db8::5/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn is_default(&self) -> bool {
        self.prefix == 0
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }

    /// The prefix as a netmask (`255.255.255.0`, `ffff:ffff:ffff:ffff::`),
    /// the form OpenStack's network_data.json uses.
    pub fn netmask(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(
                u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0),
            )),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(
                u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0),
            )),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let other = Cidr {
            addr: ip,
            prefix: self.prefix,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && other.network() == self.network()
    }
}

impl FromStr for Cidr {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let err = |reason| Error::Address {
            value: s.to_string(),
            reason,
        };
        let (addr, prefix) = s.split_once('/').ok_or(err("expected ADDRESS/PREFIX"))?;
        let addr: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| err("prefix length is not a number"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(err("prefix length too long for the address family"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A static route. A `to` of `0.0.0.0/0` or `::/0` is a default route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub to: Cidr,
    pub via: IpAddr,
    #[serde(default)]
    pub metric: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BondMode {
    #[serde(rename = "802.3ad")]
    Lacp,
    #[serde(rename = "active-backup")]
    ActiveBackup,
}

impl BondMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BondMode::Lacp => "802.3ad",
            BondMode::ActiveBackup => "active-backup",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LacpRate {
    Slow,
    Fast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashPolicy {
    #[serde(rename = "layer2")]
    Layer2,
    #[serde(rename = "layer2+3")]
    Layer2And3,
    #[serde(rename = "layer3+4")]
    Layer3And4,
}

impl HashPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            HashPolicy::Layer2 => "layer2",
            HashPolicy::Layer2And3 => "layer2+3",
            HashPolicy::Layer3And4 => "layer3+4",
        }
    }
}

/// A bond over NICs named by MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bond {
    pub name: String,
    /// MACs of member NICs; each must be one of `ethernets`.
    pub members: Vec<String>,
    pub mode: BondMode,
    #[serde(default)]
    pub lacp_rate: Option<LacpRate>,
    /// Link monitoring interval; 100 ms when not given (without it the
    /// kernel never notices a dead member).
    #[serde(default)]
    pub mii_monitor_interval_ms: Option<u32>,
    #[serde(default)]
    pub transmit_hash_policy: Option<HashPolicy>,
    /// active-backup only: the MAC of the preferred member.
    #[serde(default)]
    pub primary: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default, flatten)]
    pub ip: IpConfig,
}

/// A VLAN on a NIC or bond, named by the device's (rendered) name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vlan {
    pub id: u16,
    /// Name of the parent ethernet or bond.
    pub link: String,
    /// Defaults to `<link>.<id>`, or `vlan<id>` when that exceeds the kernel's
    /// 15-character limit.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default, flatten)]
    pub ip: IpConfig,
}

impl Vlan {
    pub fn effective_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let dotted = format!("{}.{}", self.link, self.id);
            if dotted.len() <= 15 {
                dotted
            } else {
                format!("vlan{}", self.id)
            }
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    #[serde(default)]
    pub nameservers: Vec<IpAddr>,
    #[serde(default)]
    pub search: Vec<String>,
}

/// Normalises a MAC to lower-case colon form; accepts `-` separators too.
pub fn normalize_mac(value: &str) -> Result<String, Error> {
    let err = || Error::Mac {
        value: value.to_string(),
    };
    let parts: Vec<&str> = value.split([':', '-']).collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
        return Err(err());
    }
    let mut out = Vec::with_capacity(6);
    for p in parts {
        let byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        out.push(format!("{byte:02x}"));
    }
    let mac = out.join(":");
    if mac == "00:00:00:00:00:00" {
        return Err(err());
    }
    Ok(mac)
}

/// The name a NIC gets in the installed system. A hint in the kernel's own
/// `ethN` namespace (what a ramdisk without udev sees) is replaced by
/// systemd's MAC-based name `enx<mac>`: renaming a NIC *to* `eth0` races the
/// kernel naming another NIC `eth0` at boot, while `enx…` is unique and stable.
pub fn stable_name(hint: &str, mac: &str) -> String {
    let kernel_namespace =
        hint.len() > 3 && hint.starts_with("eth") && hint[3..].bytes().all(|b| b.is_ascii_digit());
    if kernel_namespace || hint.is_empty() {
        format!("enx{}", mac.replace(':', ""))
    } else {
        hint.to_string()
    }
}

fn validate_ifname(name: &str) -> Result<(), Error> {
    let err = |reason| Error::InterfaceName {
        value: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() > 15 {
        return Err(err("must be 1 to 15 characters (the kernel's limit)"));
    }
    if name == "." || name == ".." || name == "lo" {
        return Err(err("reserved name"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(err("only letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

fn validate_mtu(device: &str, mtu: Option<u32>) -> Result<(), Error> {
    match mtu {
        Some(m) if !(576..=9216).contains(&m) => Err(Error::Device {
            device: device.to_string(),
            reason: format!("MTU {m} outside 576..=9216"),
        }),
        _ => Ok(()),
    }
}

/// Layer-3 rules of one device; returns its default gateways (v4, v6).
fn validate_ip(device: &str, ip: &IpConfig) -> Result<(Option<IpAddr>, Option<IpAddr>), Error> {
    let derr = |reason: String| Error::Device {
        device: device.to_string(),
        reason,
    };
    let mut seen = BTreeSet::new();
    for a in &ip.addresses {
        if a.is_default()
            || a.addr.is_unspecified()
            || a.addr.is_multicast()
            || a.addr.is_loopback()
        {
            return Err(derr(format!("{a} is not a host address")));
        }
        if !seen.insert(a.addr) {
            return Err(derr(format!("address {} listed twice", a.addr)));
        }
    }
    let mut default4 = ip.gateway4.map(IpAddr::V4);
    let mut default6 = ip.gateway6.map(IpAddr::V6);
    for (gw, v4) in [(default4, true), (default6, false)] {
        let Some(gw) = gw else { continue };
        // An IPv6 router is usually named by its link-local address, which
        // is on every link.
        let link_local = matches!(gw, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        let on_link = link_local || ip.addresses.iter().any(|a| a.contains(gw));
        let dhcp = if v4 { ip.dhcp4 } else { ip.dhcp6 };
        if !on_link && !dhcp {
            return Err(derr(format!(
                "gateway {gw} is in none of the device's subnets"
            )));
        }
    }
    for r in &ip.routes {
        if r.to.addr.is_ipv4() != r.via.is_ipv4() {
            return Err(derr(format!(
                "route to {} via {}: address families differ",
                r.to, r.via
            )));
        }
        if r.to.network() != r.to.addr {
            return Err(derr(format!(
                "route destination {} has host bits set (network is {}/{})",
                r.to,
                r.to.network(),
                r.to.prefix
            )));
        }
        let v4 = r.to.addr.is_ipv4();
        let family_configured = ip.addresses.iter().any(|a| a.addr.is_ipv4() == v4)
            || if v4 { ip.dhcp4 } else { ip.dhcp6 };
        if !family_configured {
            return Err(derr(format!(
                "route to {} needs an IPv{} address or DHCP on the device",
                r.to,
                if v4 { 4 } else { 6 }
            )));
        }
        if r.to.is_default() {
            let slot = if r.to.addr.is_ipv4() {
                &mut default4
            } else {
                &mut default6
            };
            if slot.is_some() {
                return Err(derr(format!(
                    "two default routes (gateway and route to {})",
                    r.to
                )));
            }
            *slot = Some(r.via);
        }
    }
    Ok((default4, default6))
}

impl NetworkConfig {
    /// The default for a machine Anvil knows nothing more about: DHCPv4 on
    /// the NIC it network-booted from, named after what the ramdisk saw when
    /// hardware facts exist. Other NICs are left alone (not listed), so the
    /// installed system does not wait for links that are not cabled.
    pub fn dhcp_on_boot_nic(
        facts: Option<&HardwareFacts>,
        boot_mac: &str,
    ) -> Result<NetworkConfig, Error> {
        let mac = normalize_mac(boot_mac)?;
        let hint = match facts {
            None => String::new(),
            Some(f) => {
                let nic = f
                    .nics
                    .iter()
                    .find(|n| {
                        [Some(&n.mac), n.permanent_mac.as_ref()]
                            .into_iter()
                            .flatten()
                            .any(|m| normalize_mac(m).ok().as_ref() == Some(&mac))
                    })
                    .ok_or(Error::BootNicUnknown { mac: mac.clone() })?;
                nic.name.clone()
            }
        };
        let name = stable_name(&hint, &mac);
        Ok(NetworkConfig {
            ethernets: vec![Ethernet {
                mac,
                name,
                mtu: None,
                ip: IpConfig::dhcp4(),
            }],
            ..NetworkConfig::default()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.ethernets.is_empty() && self.bonds.is_empty() && self.vlans.is_empty()
    }

    /// Checks every rule and returns the normalised config (lower-case MACs,
    /// `ethN` hints replaced, DNS search domains lower-cased) that renderers use.
    pub fn validated(&self) -> Result<NetworkConfig, Error> {
        let mut out = self.clone();
        let mut names = BTreeSet::new();
        let mut claim = |name: &str| -> Result<(), Error> {
            validate_ifname(name)?;
            if names.insert(name.to_string()) {
                Ok(())
            } else {
                Err(Error::DuplicateName {
                    name: name.to_string(),
                })
            }
        };
        let mut by_mac: BTreeMap<String, usize> = BTreeMap::new();
        for (i, e) in out.ethernets.iter_mut().enumerate() {
            e.mac = normalize_mac(&e.mac)?;
            if by_mac.insert(e.mac.clone(), i).is_some() {
                return Err(Error::DuplicateMac { mac: e.mac.clone() });
            }
            e.name = stable_name(&e.name, &e.mac);
            claim(&e.name)?;
        }
        let mut bonded = BTreeSet::new();
        for b in &mut out.bonds {
            claim(&b.name)?;
            let berr = |reason: String| Error::Bond {
                bond: b.name.clone(),
                reason,
            };
            if b.members.is_empty() {
                return Err(berr("has no members".into()));
            }
            for m in &mut b.members {
                *m = normalize_mac(m)?;
                let Some(&i) = by_mac.get(m.as_str()) else {
                    return Err(berr(format!("member {m} is not one of the machine's NICs")));
                };
                if !bonded.insert(m.clone()) {
                    return Err(berr(format!("member {m} is already in a bond")));
                }
                if !out.ethernets[i].ip.is_empty() {
                    return Err(berr(format!(
                        "member {} ({m}) has its own addresses; put them on the bond",
                        out.ethernets[i].name
                    )));
                }
            }
            if let Some(p) = &mut b.primary {
                *p = normalize_mac(p)?;
                if b.mode != BondMode::ActiveBackup {
                    return Err(berr("primary is only meaningful for active-backup".into()));
                }
                if !b.members.contains(p) {
                    return Err(berr(format!("primary {p} is not a member")));
                }
            }
            if b.lacp_rate.is_some() && b.mode != BondMode::Lacp {
                return Err(berr("lacp_rate needs mode 802.3ad".into()));
            }
            if b.mii_monitor_interval_ms == Some(0) {
                return Err(berr("mii_monitor_interval_ms must be > 0".into()));
            }
        }
        let parents: BTreeSet<String> = out
            .ethernets
            .iter()
            .map(|e| e.name.clone())
            .chain(out.bonds.iter().map(|b| b.name.clone()))
            .collect();
        let mut vlan_keys = BTreeSet::new();
        for v in &mut out.vlans {
            let name = v.effective_name();
            let verr = |reason: String| Error::Vlan {
                vlan: name.clone(),
                reason,
            };
            if !(1..=4094).contains(&v.id) {
                return Err(verr(format!("id {} outside 1..=4094", v.id)));
            }
            if !parents.contains(&v.link) {
                return Err(verr(format!(
                    "link {:?} is neither a listed NIC nor a bond",
                    v.link
                )));
            }
            if bonded.contains(
                &out.ethernets
                    .iter()
                    .find(|e| e.name == v.link)
                    .map(|e| e.mac.clone())
                    .unwrap_or_default(),
            ) {
                return Err(verr(format!(
                    "link {} is a bond member; put the VLAN on the bond",
                    v.link
                )));
            }
            if !vlan_keys.insert((v.link.clone(), v.id)) {
                return Err(verr(format!("VLAN {} on {} listed twice", v.id, v.link)));
            }
            v.name = Some(name.clone());
            claim(&name)?;
        }
        // Per-device rules, and one default route per family overall.
        let mut defaults: [Option<(String, IpAddr)>; 2] = [None, None];
        let devices = out
            .ethernets
            .iter()
            .map(|e| (e.name.clone(), e.mtu, &e.ip))
            .chain(out.bonds.iter().map(|b| (b.name.clone(), b.mtu, &b.ip)))
            .chain(out.vlans.iter().map(|v| (v.effective_name(), v.mtu, &v.ip)));
        for (name, mtu, ip) in devices {
            validate_mtu(&name, mtu)?;
            let (d4, d6) = validate_ip(&name, ip)?;
            for (slot, gw, family) in [(0, d4, 4u8), (1, d6, 6u8)] {
                let Some(gw) = gw else { continue };
                if let Some((first, _)) = &defaults[slot] {
                    return Err(Error::TwoDefaultRoutes {
                        family,
                        first: first.clone(),
                        second: name.clone(),
                    });
                }
                defaults[slot] = Some((name.clone(), gw));
            }
        }
        out.dns.search = out
            .dns
            .search
            .iter()
            .map(|d| validate_domain(d))
            .collect::<Result<_, _>>()?;
        if (!out.dns.nameservers.is_empty() || !out.dns.search.is_empty())
            && out.dns_device().is_none()
        {
            return Err(Error::Device {
                device: "dns".into(),
                reason: "DNS settings given but no interface has an address or DHCP".into(),
            });
        }
        Ok(out)
    }

    /// The device that carries the DNS settings in formats that attach them
    /// to a device (netplan v2): the one with the IPv4 default route, else
    /// the IPv6 one, else the first device with any layer-3 config.
    pub fn dns_device(&self) -> Option<String> {
        let devices: Vec<(String, &IpConfig)> = self
            .ethernets
            .iter()
            .map(|e| (e.name.clone(), &e.ip))
            .chain(self.bonds.iter().map(|b| (b.name.clone(), &b.ip)))
            .chain(self.vlans.iter().map(|v| (v.effective_name(), &v.ip)))
            .collect();
        let has_default = |ip: &IpConfig, v4: bool| {
            (if v4 {
                ip.gateway4.is_some()
            } else {
                ip.gateway6.is_some()
            }) || ip
                .routes
                .iter()
                .any(|r| r.to.is_default() && r.to.addr.is_ipv4() == v4)
        };
        devices
            .iter()
            .find(|(_, ip)| has_default(ip, true))
            .or_else(|| devices.iter().find(|(_, ip)| has_default(ip, false)))
            .or_else(|| devices.iter().find(|(_, ip)| !ip.is_empty()))
            .map(|(n, _)| n.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anvil_inventory::Nic;

    fn eth(mac: &str, name: &str) -> Ethernet {
        Ethernet {
            mac: mac.into(),
            name: name.into(),
            mtu: None,
            ip: IpConfig::default(),
        }
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn static_ip(addr: &str, gw: &str) -> IpConfig {
        IpConfig {
            addresses: vec![cidr(addr)],
            gateway4: Some(gw.parse().unwrap()),
            ..IpConfig::default()
        }
    }

    fn bond(members: &[&str]) -> Bond {
        Bond {
            name: "bond0".into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            mode: BondMode::Lacp,
            lacp_rate: None,
            mii_monitor_interval_ms: None,
            transmit_hash_policy: None,
            primary: None,
            mtu: None,
            ip: IpConfig::default(),
        }
    }

    const A: &str = "52:54:00:00:00:0a";
    const B: &str = "52:54:00:00:00:0b";

    #[test]
    fn cidr_parse_and_math() {
        let c = cidr("10.1.2.3/20");
        assert_eq!(c.network().to_string(), "10.1.0.0");
        assert_eq!(c.netmask().to_string(), "255.255.240.0");
        assert!(c.contains("10.1.15.254".parse().unwrap()));
        assert!(!c.contains("10.1.16.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let v6 = cidr("2001:db8::5/64");
        assert_eq!(v6.netmask().to_string(), "ffff:ffff:ffff:ffff::");
        assert_eq!(cidr("0.0.0.0/0").netmask().to_string(), "0.0.0.0");
        assert_eq!(cidr("1.2.3.4/32").network().to_string(), "1.2.3.4");
        for bad in ["10.0.0.1", "10.0.0.1/33", "::1/129", "x/24", "10.0.0.1/abc"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_and_names() {
        assert_eq!(
            normalize_mac("52-54-00-AB-cd-01").unwrap(),
            "52:54:00:ab:cd:01"
        );
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0g",
            "00:00:00:00:00:00",
            "",
        ] {
            assert!(normalize_mac(bad).is_err(), "{bad}");
        }
        assert_eq!(stable_name("eth0", A), "enx52540000000a");
        assert_eq!(stable_name("", A), "enx52540000000a");
        assert_eq!(stable_name("ens3", A), "ens3");
        assert_eq!(stable_name("ethernet", A), "ethernet");
        for bad in ["a/b", "has space", "lo", "sixteen-chars-xx"] {
            let net = NetworkConfig {
                ethernets: vec![eth(A, bad)],
                ..NetworkConfig::default()
            };
            assert!(
                matches!(net.validated(), Err(Error::InterfaceName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn default_from_facts_and_without() {
        let facts = HardwareFacts {
            nics: vec![
                Nic {
                    name: "ens3".into(),
                    mac: A.into(),
                    ..Nic::default()
                },
                Nic {
                    name: "eth1".into(),
                    mac: "02:00:00:00:00:01".into(),
                    permanent_mac: Some(B.into()),
                    ..Nic::default()
                },
            ],
            ..HardwareFacts::default()
        };
        let net = NetworkConfig::dhcp_on_boot_nic(Some(&facts), "52:54:00:00:00:0A").unwrap();
        assert_eq!(net.ethernets.len(), 1, "only the boot NIC is configured");
        assert_eq!(net.ethernets[0].name, "ens3");
        assert_eq!(net.ethernets[0].mac, A);
        assert!(net.ethernets[0].ip.dhcp4);
        // found by its permanent MAC; ethN hint replaced
        let net = NetworkConfig::dhcp_on_boot_nic(Some(&facts), B).unwrap();
        assert_eq!(net.ethernets[0].name, "enx52540000000b");
        let net = NetworkConfig::dhcp_on_boot_nic(None, B).unwrap();
        assert_eq!(net.ethernets[0].name, "enx52540000000b");
        assert_eq!(
            NetworkConfig::dhcp_on_boot_nic(Some(&facts), "52:54:00:00:00:99"),
            Err(Error::BootNicUnknown {
                mac: "52:54:00:00:00:99".into()
            })
        );
    }

    #[test]
    fn duplicates_refused() {
        let net = NetworkConfig {
            ethernets: vec![eth(A, "x"), eth(&A.to_uppercase(), "y")],
            ..NetworkConfig::default()
        };
        assert!(matches!(net.validated(), Err(Error::DuplicateMac { .. })));
        let net = NetworkConfig {
            ethernets: vec![eth(A, "x"), eth(B, "x")],
            ..NetworkConfig::default()
        };
        assert!(matches!(net.validated(), Err(Error::DuplicateName { .. })));
        let mut b = bond(&[A]);
        b.name = "x".into();
        let net = NetworkConfig {
            ethernets: vec![eth(A, "x")],
            bonds: vec![b],
            ..NetworkConfig::default()
        };
        assert!(matches!(net.validated(), Err(Error::DuplicateName { .. })));
    }

    fn bond_err(net: NetworkConfig) -> String {
        match net.validated() {
            Err(Error::Bond { reason, .. }) => reason,
            other => panic!("expected a bond error, got {other:?}"),
        }
    }

    #[test]
    fn bond_rules() {
        let nics = vec![eth(A, "ens3"), eth(B, "ens4")];
        let with = |b: Bond| NetworkConfig {
            ethernets: nics.clone(),
            bonds: vec![b],
            ..NetworkConfig::default()
        };
        assert!(bond_err(with(bond(&[]))).contains("no members"));
        assert!(bond_err(with(bond(&["52:54:00:00:00:99"]))).contains("not one of"));
        let mut twice = with(bond(&[A]));
        let mut second = bond(&[A]);
        second.name = "bond1".into();
        twice.bonds.push(second);
        assert!(bond_err(twice).contains("already in a bond"));
        let mut addressed = with(bond(&[A, B]));
        addressed.ethernets[0].ip = IpConfig::dhcp4();
        assert!(bond_err(addressed).contains("has its own addresses"));
        let mut primary = bond(&[A, B]);
        primary.primary = Some(A.into());
        assert!(bond_err(with(primary.clone())).contains("only meaningful"));
        primary.mode = BondMode::ActiveBackup;
        primary.primary = Some("52:54:00:00:00:99".into());
        assert!(bond_err(with(primary)).contains("not a member"));
        let mut rate = bond(&[A, B]);
        rate.mode = BondMode::ActiveBackup;
        rate.lacp_rate = Some(LacpRate::Fast);
        assert!(bond_err(with(rate)).contains("lacp_rate"));
        let mut ok = bond(&[&A.to_uppercase(), B]);
        ok.ip = static_ip("10.0.0.5/24", "10.0.0.1");
        let v = with(ok).validated().unwrap();
        assert_eq!(v.bonds[0].members, vec![A.to_string(), B.to_string()]);
    }

    fn vlan(id: u16, link: &str) -> Vlan {
        Vlan {
            id,
            link: link.into(),
            name: None,
            mtu: None,
            ip: IpConfig::default(),
        }
    }

    #[test]
    fn vlan_rules_and_names() {
        let base = NetworkConfig {
            ethernets: vec![eth(A, "enp129s0f1np1"), eth(B, "ens4")],
            bonds: vec![],
            ..NetworkConfig::default()
        };
        let mut net = base.clone();
        net.vlans = vec![vlan(100, "ens4"), vlan(200, "enp129s0f1np1")];
        let v = net.validated().unwrap();
        assert_eq!(v.vlans[0].name.as_deref(), Some("ens4.100"));
        // enp129s0f1np1.200 is 17 characters: over the kernel's limit
        assert_eq!(v.vlans[1].name.as_deref(), Some("vlan200"));
        for (vl, want) in [
            (vlan(0, "ens4"), "outside"),
            (vlan(4095, "ens4"), "outside"),
            (vlan(10, "nope"), "neither"),
        ] {
            let mut net = base.clone();
            net.vlans = vec![vl];
            match net.validated() {
                Err(Error::Vlan { reason, .. }) => assert!(reason.contains(want), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
        let mut dup = base.clone();
        dup.vlans = vec![vlan(10, "ens4"), {
            let mut v = vlan(10, "ens4");
            v.name = Some("other".into());
            v
        }];
        assert!(matches!(dup.validated(), Err(Error::Vlan { .. })));
        let mut on_member = base.clone();
        on_member.bonds = vec![bond(&[B])];
        on_member.vlans = vec![vlan(10, "ens4")];
        match on_member.validated() {
            Err(Error::Vlan { reason, .. }) => assert!(reason.contains("bond member")),
            other => panic!("{other:?}"),
        }
    }

    fn device_err(ip: IpConfig) -> String {
        let mut e = eth(A, "ens3");
        e.ip = ip;
        let net = NetworkConfig {
            ethernets: vec![e],
            ..NetworkConfig::default()
        };
        match net.validated() {
            Err(Error::Device { reason, .. }) => reason,
            other => panic!("expected a device error, got {other:?}"),
        }
    }

    #[test]
    fn layer3_rules() {
        assert!(
            device_err(static_ip("10.0.0.5/24", "10.0.1.1"))
                .contains("none of the device's subnets")
        );
        // with DHCP the gateway may be anywhere (the lease brings the route)
        let mut e = eth(A, "ens3");
        e.ip = IpConfig {
            dhcp4: true,
            gateway4: Some("192.0.2.1".parse().unwrap()),
            ..IpConfig::default()
        };
        assert!(
            NetworkConfig {
                ethernets: vec![e],
                ..NetworkConfig::default()
            }
            .validated()
            .is_ok()
        );
        let mut e = eth(A, "ens3");
        e.ip = IpConfig {
            addresses: vec![cidr("2001:db8::5/64")],
            gateway6: Some("fe80::1".parse().unwrap()),
            ..IpConfig::default()
        };
        assert!(
            NetworkConfig {
                ethernets: vec![e],
                ..NetworkConfig::default()
            }
            .validated()
            .is_ok(),
            "a link-local IPv6 gateway is on-link"
        );
        let mut two = static_ip("10.0.0.5/24", "10.0.0.1");
        two.routes.push(Route {
            to: cidr("0.0.0.0/0"),
            via: "10.0.0.2".parse().unwrap(),
            metric: None,
        });
        assert!(device_err(two).contains("two default routes"));
        let mut fam = static_ip("10.0.0.5/24", "10.0.0.1");
        fam.routes.push(Route {
            to: cidr("2001:db8::/32"),
            via: "10.0.0.1".parse().unwrap(),
            metric: None,
        });
        assert!(device_err(fam).contains("families differ"));
        let mut v6_without = static_ip("10.0.0.5/24", "10.0.0.1");
        v6_without.routes.push(Route {
            to: cidr("2001:db8::/32"),
            via: "fe80::1".parse().unwrap(),
            metric: None,
        });
        assert!(device_err(v6_without).contains("needs an IPv6 address"));
        let mut host_bits = static_ip("10.0.0.5/24", "10.0.0.1");
        host_bits.routes.push(Route {
            to: cidr("172.16.0.1/12"),
            via: "10.0.0.1".parse().unwrap(),
            metric: None,
        });
        assert!(device_err(host_bits).contains("host bits"));
        let mut dup = static_ip("10.0.0.5/24", "10.0.0.1");
        dup.addresses.push(cidr("10.0.0.5/16"));
        assert!(device_err(dup).contains("listed twice"));
        for bad in ["0.0.0.0/0", "127.0.0.1/8", "224.0.0.1/24", "0.0.0.0/8"] {
            assert!(
                device_err(IpConfig {
                    addresses: vec![cidr(bad)],
                    ..IpConfig::default()
                })
                .contains("not a host address"),
                "{bad}"
            );
        }
        let mut e = eth(A, "ens3");
        e.mtu = Some(100);
        assert!(matches!(
            NetworkConfig {
                ethernets: vec![e],
                ..NetworkConfig::default()
            }
            .validated(),
            Err(Error::Device { .. })
        ));
    }

    #[test]
    fn one_default_route_per_family_and_dns_placement() {
        let mut a = eth(A, "ens3");
        a.ip = static_ip("10.0.0.5/24", "10.0.0.1");
        let mut b = eth(B, "ens4");
        b.ip = static_ip("10.0.1.5/24", "10.0.1.1");
        let net = NetworkConfig {
            ethernets: vec![a.clone(), b.clone()],
            ..NetworkConfig::default()
        };
        assert!(matches!(
            net.validated(),
            Err(Error::TwoDefaultRoutes { family: 4, .. })
        ));
        b.ip.gateway4 = None;
        let net = NetworkConfig {
            ethernets: vec![b.clone(), a],
            dns: Dns {
                nameservers: vec!["10.0.0.53".parse().unwrap()],
                search: vec!["Example.ORG.".into()],
            },
            ..NetworkConfig::default()
        };
        let v = net.validated().unwrap();
        assert_eq!(v.dns.search, vec!["example.org".to_string()]);
        assert_eq!(
            v.dns_device().as_deref(),
            Some("ens3"),
            "the gateway's device"
        );
        let lonely = NetworkConfig {
            ethernets: vec![eth(A, "ens3")],
            dns: net.dns.clone(),
            ..NetworkConfig::default()
        };
        assert!(matches!(lonely.validated(), Err(Error::Device { .. })));
        let mut bad_search = net.clone();
        bad_search.dns.search = vec!["not valid".into()];
        assert!(matches!(bad_search.validated(), Err(Error::Domain { .. })));
    }

    #[test]
    fn serde_shape() {
        let json = serde_json::json!({
            "ethernets": [{"mac": A, "name": "ens3", "addresses": ["10.0.0.5/24"], "gateway4": "10.0.0.1"}],
            "vlans": [{"id": 5, "link": "ens3", "dhcp4": true}],
            "dns": {"nameservers": ["10.0.0.53"]}
        });
        let net: NetworkConfig = serde_json::from_value(json).unwrap();
        assert_eq!(net.ethernets[0].ip.addresses[0], cidr("10.0.0.5/24"));
        assert!(net.vlans[0].ip.dhcp4);
        net.validated().unwrap();
        let typo = serde_json::json!({"ethernets": [{"mac": A, "name": "x", "adresses": ["10.0.0.5/24"]}]});
        assert!(
            serde_json::from_value::<NetworkConfig>(typo).is_err(),
            "a misspelt field must not silently drop addresses"
        );
        let bad =
            serde_json::json!({"ethernets": [{"mac": A, "name": "x", "addresses": ["10.0.0.5"]}]});
        assert!(serde_json::from_value::<NetworkConfig>(bad).is_err());
    }
}
