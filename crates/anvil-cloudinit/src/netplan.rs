//! network-config version 2 (netplan's schema, which cloud-init reads), as JSON.

use serde_json::{Map, Value, json};

use crate::network::{Bond, BondMode, IpConfig, NetworkConfig};

/// Renders a validated config. Default routes are written as routes to
/// `0.0.0.0/0` / `::/0`: `gateway4`/`gateway6` are deprecated in netplan, and
/// cloud-init 22.4 (Debian 12) rejects `to: default` in its own renderers.
pub(crate) fn render(net: &NetworkConfig) -> Value {
    let dns_device = net.dns_device();
    let mut root = Map::new();
    root.insert("version".into(), json!(2));
    let mut ethernets = Map::new();
    for e in &net.ethernets {
        let mut dev = Map::new();
        dev.insert("match".into(), json!({ "macaddress": e.mac }));
        dev.insert("set-name".into(), json!(e.name));
        if let Some(mtu) = e.mtu {
            dev.insert("mtu".into(), json!(mtu));
        }
        layer3(&mut dev, &e.ip, dns_device.as_deref() == Some(&e.name), net);
        ethernets.insert(e.name.clone(), Value::Object(dev));
    }
    root.insert("ethernets".into(), Value::Object(ethernets));
    if !net.bonds.is_empty() {
        let mut bonds = Map::new();
        for b in &net.bonds {
            let mut dev = Map::new();
            dev.insert("interfaces".into(), json!(member_names(net, b)));
            dev.insert("parameters".into(), bond_parameters(net, b));
            if let Some(mtu) = b.mtu {
                dev.insert("mtu".into(), json!(mtu));
            }
            layer3(&mut dev, &b.ip, dns_device.as_deref() == Some(&b.name), net);
            bonds.insert(b.name.clone(), Value::Object(dev));
        }
        root.insert("bonds".into(), Value::Object(bonds));
    }
    if !net.vlans.is_empty() {
        let mut vlans = Map::new();
        for v in &net.vlans {
            let name = v.effective_name();
            let mut dev = Map::new();
            dev.insert("id".into(), json!(v.id));
            dev.insert("link".into(), json!(v.link));
            if let Some(mtu) = v.mtu {
                dev.insert("mtu".into(), json!(mtu));
            }
            layer3(&mut dev, &v.ip, dns_device.as_deref() == Some(&name), net);
            vlans.insert(name, Value::Object(dev));
        }
        root.insert("vlans".into(), Value::Object(vlans));
    }
    Value::Object(root)
}

pub(crate) fn member_names(net: &NetworkConfig, bond: &Bond) -> Vec<String> {
    bond.members
        .iter()
        .filter_map(|mac| net.ethernets.iter().find(|e| &e.mac == mac))
        .map(|e| e.name.clone())
        .collect()
}

fn bond_parameters(net: &NetworkConfig, b: &Bond) -> Value {
    let mut p = Map::new();
    p.insert("mode".into(), json!(b.mode.as_str()));
    p.insert(
        "mii-monitor-interval".into(),
        json!(b.mii_monitor_interval_ms.unwrap_or(100)),
    );
    if let Some(rate) = b.lacp_rate {
        p.insert(
            "lacp-rate".into(),
            serde_json::to_value(rate).unwrap_or_default(),
        );
    }
    if let Some(h) = b.transmit_hash_policy {
        p.insert("transmit-hash-policy".into(), json!(h.as_str()));
    }
    if b.mode == BondMode::ActiveBackup
        && let Some(primary) = &b.primary
        && let Some(e) = net.ethernets.iter().find(|e| &e.mac == primary)
    {
        p.insert("primary".into(), json!(e.name));
    }
    Value::Object(p)
}

fn layer3(dev: &mut Map<String, Value>, ip: &IpConfig, carries_dns: bool, net: &NetworkConfig) {
    if ip.dhcp4 {
        dev.insert("dhcp4".into(), json!(true));
    }
    if ip.dhcp6 {
        dev.insert("dhcp6".into(), json!(true));
    }
    if !ip.addresses.is_empty() {
        let addrs: Vec<String> = ip.addresses.iter().map(ToString::to_string).collect();
        dev.insert("addresses".into(), json!(addrs));
    }
    let mut routes = Vec::new();
    if let Some(gw) = ip.gateway4 {
        routes.push(json!({ "to": "0.0.0.0/0", "via": gw.to_string() }));
    }
    if let Some(gw) = ip.gateway6 {
        routes.push(json!({ "to": "::/0", "via": gw.to_string() }));
    }
    for r in &ip.routes {
        let mut route = Map::new();
        route.insert("to".into(), json!(r.to.to_string()));
        route.insert("via".into(), json!(r.via.to_string()));
        if let Some(m) = r.metric {
            route.insert("metric".into(), json!(m));
        }
        routes.push(Value::Object(route));
    }
    if !routes.is_empty() {
        dev.insert("routes".into(), Value::Array(routes));
    }
    if carries_dns {
        let mut ns = Map::new();
        if !net.dns.nameservers.is_empty() {
            let a: Vec<String> = net
                .dns
                .nameservers
                .iter()
                .map(ToString::to_string)
                .collect();
            ns.insert("addresses".into(), json!(a));
        }
        if !net.dns.search.is_empty() {
            ns.insert("search".into(), json!(net.dns.search));
        }
        if !ns.is_empty() {
            dev.insert("nameservers".into(), Value::Object(ns));
        }
    }
}
