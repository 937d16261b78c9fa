//! OpenStack `network_data.json` (links, networks, services) for config-drive.
//!
//! What cloud-init makes of it (`openstack.convert_net_json`): physical links
//! keep the `name` given here; bonds are renamed `bond0`, `bond1`… in order
//! and VLANs `<link>.<id>`, whatever their name in Anvil.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

use crate::netplan::member_names;
use crate::network::{IpConfig, NetworkConfig};

pub(crate) fn render(net: &NetworkConfig) -> Value {
    let dns_device = net.dns_device();
    let mut links = Vec::new();
    let mut networks = Vec::new();
    let mut add_networks = |device: &str, ip: &IpConfig| {
        let carries_dns = dns_device.as_deref() == Some(device);
        for n in device_networks(device, ip, net, carries_dns) {
            let id = format!("network{}", networks.len());
            let mut n = n;
            n.insert("id".into(), json!(id));
            networks.push(Value::Object(n));
        }
    };
    for e in &net.ethernets {
        let mut link = Map::new();
        link.insert("id".into(), json!(e.name));
        link.insert("name".into(), json!(e.name));
        link.insert("type".into(), json!("phy"));
        link.insert("ethernet_mac_address".into(), json!(e.mac));
        if let Some(mtu) = e.mtu {
            link.insert("mtu".into(), json!(mtu));
        }
        links.push(Value::Object(link));
        add_networks(&e.name, &e.ip);
    }
    for b in &net.bonds {
        let mut link = Map::new();
        link.insert("id".into(), json!(b.name));
        link.insert("type".into(), json!("bond"));
        link.insert("bond_links".into(), json!(member_names(net, b)));
        link.insert("bond_mode".into(), json!(b.mode.as_str()));
        link.insert(
            "bond_miimon".into(),
            json!(b.mii_monitor_interval_ms.unwrap_or(100)),
        );
        if let Some(h) = b.transmit_hash_policy {
            link.insert("bond_xmit_hash_policy".into(), json!(h.as_str()));
        }
        // A bond takes its first member's MAC; cloud-init wants it spelled out.
        if let Some(mac) = b.members.first() {
            link.insert("ethernet_mac_address".into(), json!(mac));
        }
        if let Some(mtu) = b.mtu {
            link.insert("mtu".into(), json!(mtu));
        }
        links.push(Value::Object(link));
        add_networks(&b.name, &b.ip);
    }
    for v in &net.vlans {
        let name = v.effective_name();
        let mut link = Map::new();
        link.insert("id".into(), json!(name));
        link.insert("type".into(), json!("vlan"));
        link.insert("vlan_link".into(), json!(v.link));
        link.insert("vlan_id".into(), json!(v.id));
        if let Some(mac) = parent_mac(net, &v.link) {
            link.insert("vlan_mac_address".into(), json!(mac));
        }
        if let Some(mtu) = v.mtu {
            link.insert("mtu".into(), json!(mtu));
        }
        links.push(Value::Object(link));
        add_networks(&name, &v.ip);
    }
    let services: Vec<Value> = net
        .dns
        .nameservers
        .iter()
        .map(|a| json!({ "type": "dns", "address": a.to_string() }))
        .collect();
    json!({ "links": links, "networks": networks, "services": services })
}

fn parent_mac(net: &NetworkConfig, link: &str) -> Option<String> {
    net.ethernets
        .iter()
        .find(|e| e.name == link)
        .map(|e| e.mac.clone())
        .or_else(|| {
            net.bonds
                .iter()
                .find(|b| b.name == link)
                .and_then(|b| b.members.first().cloned())
        })
}

/// One network per static address and per DHCP family; routes (the default
/// gateway included) go on the first network of their family.
fn device_networks(
    device: &str,
    ip: &IpConfig,
    net: &NetworkConfig,
    carries_dns: bool,
) -> Vec<Map<String, Value>> {
    let mut out: Vec<(bool, Map<String, Value>)> = Vec::new();
    if ip.dhcp4 {
        out.push((true, network(device, "ipv4_dhcp")));
    }
    if ip.dhcp6 {
        out.push((false, network(device, "ipv6_dhcp")));
    }
    for a in &ip.addresses {
        let v4 = a.addr.is_ipv4();
        let mut n = network(device, if v4 { "ipv4" } else { "ipv6" });
        n.insert("ip_address".into(), json!(a.addr.to_string()));
        n.insert("netmask".into(), json!(a.netmask().to_string()));
        out.push((v4, n));
    }
    let mut routes: Vec<(bool, Value)> = Vec::new();
    let route = |to_net: IpAddr, mask: IpAddr, via: IpAddr| json!({ "network": to_net.to_string(), "netmask": mask.to_string(), "gateway": via.to_string() });
    if let Some(gw) = ip.gateway4 {
        let any: crate::Cidr = "0.0.0.0/0".parse().expect("literal");
        routes.push((true, route(any.network(), any.netmask(), IpAddr::V4(gw))));
    }
    if let Some(gw) = ip.gateway6 {
        let any: crate::Cidr = "::/0".parse().expect("literal");
        routes.push((false, route(any.network(), any.netmask(), IpAddr::V6(gw))));
    }
    for r in &ip.routes {
        routes.push((
            r.to.addr.is_ipv4(),
            route(r.to.network(), r.to.netmask(), r.via),
        ));
    }
    for (v4, r) in routes {
        // Prefer a static network of the family, else its DHCP network.
        let slot = out
            .iter()
            .position(|(f, n)| *f == v4 && n.contains_key("ip_address"))
            .or_else(|| out.iter().position(|(f, _)| *f == v4));
        if let Some(i) = slot {
            let list = out[i]
                .1
                .entry("routes")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = list {
                list.push(r);
            }
        }
    }
    // DNS is also in `services`, but cloud-init's netplan renderer drops
    // those global servers; on the subnet every renderer keeps them.
    if carries_dns && let Some((_, first)) = out.first_mut() {
        if !net.dns.nameservers.is_empty() {
            let servers: Vec<String> = net
                .dns
                .nameservers
                .iter()
                .map(ToString::to_string)
                .collect();
            first.insert("dns_nameservers".into(), json!(servers));
        }
        if !net.dns.search.is_empty() {
            first.insert("dns_search".into(), json!(net.dns.search));
        }
    }
    out.into_iter().map(|(_, n)| n).collect()
}

fn network(device: &str, kind: &str) -> Map<String, Value> {
    let mut n = Map::new();
    n.insert("link".into(), json!(device));
    n.insert("type".into(), json!(kind));
    n
}
