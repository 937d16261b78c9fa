//! LLDP neighbours as NetBox cables: pure planning, no I/O.
//!
//! Commissioning hears, on each connected NIC, the switch port at the other
//! end of the wire (LLDP: chassis ID, port ID, port description, system
//! name). When NetBox knows that switch and that port, the wire is a cable
//! between the machine's interface and the switch's. Ownership
//! (`docs/netbox-sync.md`): NetBox owns every cable that exists; Anvil only
//! adds a cable between two interfaces that have none. An interface already
//! cabled to something else, or a neighbour NetBox does not know, is a
//! `Conflict`; a cable is never changed or deleted.
//!
//! The caller reads three things (see `NetBoxClient::devices_named`,
//! `devices_with_macs`, `cable_interfaces`): the devices the neighbours
//! name, the devices owning chassis MACs, and the interfaces, with their
//! cables, of both the machines' devices and those switches.

use crate::client::NetBoxClient;
use crate::error::{Error, Result};
use crate::plan::{Conflict, ConflictKind};
use anvil_types::MacAddr;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap, HashSet};
use utoipa::ToSchema;
use uuid::Uuid;

/// One LLDP neighbour as commissioning reported it (the fields of
/// `anvil_inventory::LldpNeighbor` that matching uses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Neighbour {
    /// The machine's interface (kernel name) the frame arrived on.
    pub interface: String,
    pub chassis_id: String,
    pub chassis_id_subtype: String,
    pub port_id: String,
    pub port_id_subtype: String,
    pub port_description: Option<String>,
    pub system_name: Option<String>,
}

/// A linked machine with the LLDP neighbours of its latest facts.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineNeighbours {
    pub machine_id: Uuid,
    pub hostname: String,
    /// The NetBox device the machine is linked to.
    pub device_id: u64,
    /// The machine's NICs from the same facts: kernel name → MACs (the
    /// current one, and the burned-in one when it differs).
    pub nics: Vec<(String, Vec<MacAddr>)>,
    pub neighbours: Vec<Neighbour>,
}

/// A device read by name or MAC: only what matching needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedDevice {
    pub id: u64,
    pub name: String,
}

/// What is at the far end of an interface's cable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// `dcim.interface`, `dcim.frontport`, `circuits.circuittermination` …
    pub object_type: String,
    pub id: u64,
    /// "device name / port name" for messages.
    pub label: String,
}

/// An interface with its cable: `/api/dcim/interfaces/` with
/// `cable,link_peers,connected_endpoints`.
#[derive(Debug, Clone, PartialEq)]
pub struct CableInterface {
    pub id: u64,
    pub device_id: u64,
    pub name: String,
    pub macs: Vec<MacAddr>,
    /// The cable's id, if the interface has one.
    pub cable: Option<u64>,
    /// The far end of that cable.
    pub link_peers: Vec<Peer>,
    /// The end of the whole path (through patch panels).
    pub connected_endpoints: Vec<Peer>,
}

/// A cable Anvil creates: both ends are interfaces without a cable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CableCreate {
    pub machine_id: Uuid,
    /// The machine's device and interface (the A end).
    pub device_id: u64,
    pub interface_id: u64,
    pub interface: String,
    /// The switch's device and interface (the B end).
    pub peer_device_id: u64,
    pub peer_device: String,
    pub peer_interface_id: u64,
    pub peer_interface: String,
}

impl CableCreate {
    /// One item of `POST /api/dcim/cables/` (a list of these).
    pub fn to_json(&self) -> Value {
        json!({
            "a_terminations": [{"object_type": "dcim.interface", "object_id": self.interface_id}],
            "b_terminations": [{"object_type": "dcim.interface", "object_id": self.peer_interface_id}],
            "status": "connected",
            "description": "LLDP, written by Anvil",
        })
    }
}

/// An LLDP neighbour that does not become a cable, without a conflict: the
/// machine's own interface is not in NetBox yet (the sync creates it; the
/// next run cables it), or the neighbour is that interface itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CableSkip {
    pub machine_id: Uuid,
    pub interface: String,
    pub reason: String,
}

/// What the LLDP cables of a sync are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CablePlan {
    pub create: Vec<CableCreate>,
    /// Neighbours whose cable NetBox already has.
    pub unchanged: u64,
    pub skipped: Vec<CableSkip>,
    pub conflicts: Vec<Conflict>,
}

/// The LLDP cables of one sync, as its report shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct CableSummary {
    /// Cables this sync created in NetBox.
    pub created: u64,
    /// LLDP neighbours whose cable NetBox already has.
    pub unchanged: u64,
    /// Cables planned but not created (dry run, or NetBox failed).
    pub pending: u64,
    /// The cables created or, when `pending`, planned.
    pub cables: Vec<CableCreate>,
    pub skipped: Vec<CableSkip>,
}

/// Everything `plan_cables` works from.
pub struct CableInput<'a> {
    pub machines: &'a [MachineNeighbours],
    /// Devices named by the neighbours' system names (`devices_named`).
    pub named: &'a [NamedDevice],
    /// Devices holding the neighbours' chassis MACs (`devices_with_macs`).
    pub by_mac: &'a [(MacAddr, NamedDevice)],
    /// Interfaces of the machines' devices and of every device above.
    pub interfaces: &'a [CableInterface],
}

/// The host part of an LLDP system name (`leaf-1.dc1.example.net` → `leaf-1`).
pub fn short_name(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// The device names to look up: every system name, and its short form.
pub fn names_to_find(machines: &[MachineNeighbours]) -> Vec<String> {
    let mut out = BTreeSet::new();
    for n in machines.iter().flat_map(|m| &m.neighbours) {
        if let Some(s) = n.system_name.as_deref().map(str::trim)
            && !s.is_empty()
        {
            out.insert(s.to_string());
            out.insert(short_name(s).to_string());
        }
    }
    out.into_iter().filter(|s| !s.is_empty()).collect()
}

fn chassis_mac(n: &Neighbour) -> Option<MacAddr> {
    (n.chassis_id_subtype == "mac_address")
        .then(|| n.chassis_id.parse().ok())
        .flatten()
}

/// Chassis MACs of neighbours whose system name finds no device or several
/// (the MAC lookup is only worth a request for those).
pub fn macs_to_find(machines: &[MachineNeighbours], named: &[NamedDevice]) -> Vec<MacAddr> {
    let mut out = BTreeSet::new();
    for n in machines.iter().flat_map(|m| &m.neighbours) {
        if find_by_name(n, named).len() == 1 {
            continue;
        }
        if let Some(m) = chassis_mac(n) {
            out.insert(m);
        }
    }
    out.into_iter().collect()
}

/// Devices a neighbour's system name designates: exact name, else the same
/// ignoring case, else the short name likewise. Several = ambiguous.
fn find_by_name<'a>(n: &Neighbour, named: &'a [NamedDevice]) -> Vec<&'a NamedDevice> {
    let Some(sys) = n
        .system_name
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    else {
        return Vec::new();
    };
    let tries = [sys, short_name(sys)];
    for t in tries {
        let exact: Vec<&NamedDevice> = named.iter().filter(|d| d.name == t).collect();
        if !exact.is_empty() {
            return exact;
        }
        let folded: Vec<&NamedDevice> = named
            .iter()
            .filter(|d| d.name.eq_ignore_ascii_case(t))
            .collect();
        if !folded.is_empty() {
            return folded;
        }
    }
    Vec::new()
}

/// How the neighbour is described in messages.
fn describe(n: &Neighbour) -> String {
    let who = n
        .system_name
        .clone()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| format!("chassis {}", n.chassis_id));
    let port = match n.port_description.as_deref() {
        Some(d) if !d.is_empty() && d != n.port_id => format!("{} ({d})", n.port_id),
        _ => n.port_id.clone(),
    };
    format!("{who} port {port}")
}

/// The switch port a neighbour names on `device`: the port ID when it is an
/// interface name, else the port description, matched exactly then
/// ignoring case; or a port ID that is a MAC on one of the device's
/// interfaces.
fn find_port<'a>(
    n: &Neighbour,
    device: u64,
    by_device: &HashMap<u64, Vec<&'a CableInterface>>,
) -> Vec<&'a CableInterface> {
    let ifaces = by_device.get(&device).map(Vec::as_slice).unwrap_or(&[]);
    let mut names: Vec<&str> = Vec::new();
    if n.port_id_subtype == "interface_name" {
        names.push(n.port_id.trim());
    }
    if let Some(d) = n.port_description.as_deref() {
        names.push(d.trim());
    }
    for name in names.into_iter().filter(|s| !s.is_empty()) {
        let exact: Vec<&CableInterface> =
            ifaces.iter().copied().filter(|i| i.name == name).collect();
        if !exact.is_empty() {
            return exact;
        }
        let folded: Vec<&CableInterface> = ifaces
            .iter()
            .copied()
            .filter(|i| i.name.eq_ignore_ascii_case(name))
            .collect();
        if !folded.is_empty() {
            return folded;
        }
    }
    if n.port_id_subtype == "mac_address"
        && let Ok(mac) = n.port_id.parse::<MacAddr>()
    {
        return ifaces
            .iter()
            .copied()
            .filter(|i| i.macs.contains(&mac))
            .collect();
    }
    Vec::new()
}

/// The machine's NetBox interface for a kernel interface name: the one
/// holding the NIC's MAC, else the one with the same name.
fn machine_interface<'a>(
    m: &MachineNeighbours,
    kernel: &str,
    ifaces: &[&'a CableInterface],
) -> Option<&'a CableInterface> {
    let macs: &[MacAddr] = m
        .nics
        .iter()
        .find(|(name, _)| name == kernel)
        .map(|(_, macs)| macs.as_slice())
        .unwrap_or(&[]);
    ifaces
        .iter()
        .copied()
        .find(|i| macs.iter().any(|mac| i.macs.contains(mac)))
        .or_else(|| ifaces.iter().copied().find(|i| i.name == kernel))
}

fn peer_is(peers: &[Peer], iface: u64) -> bool {
    peers.len() == 1 && peers[0].object_type == "dcim.interface" && peers[0].id == iface
}

fn peers_label(peers: &[Peer]) -> String {
    if peers.is_empty() {
        return "nothing".into();
    }
    peers
        .iter()
        .map(|p| p.label.clone())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a switch port resolves to, or why it does not.
enum Resolved<'a> {
    Port(&'a NamedDevice, &'a CableInterface),
    Conflict(ConflictKind, String),
}

fn resolve<'a>(
    n: &Neighbour,
    input: &CableInput<'a>,
    by_device: &HashMap<u64, Vec<&'a CableInterface>>,
) -> Resolved<'a> {
    let mut devices = find_by_name(n, input.named);
    if devices.len() > 1
        && let Some(mac) = chassis_mac(n)
    {
        // Two devices of that name: the chassis MAC may tell them apart.
        let owners: HashSet<u64> = input
            .by_mac
            .iter()
            .filter(|(m, _)| *m == mac)
            .map(|(_, d)| d.id)
            .collect();
        devices.retain(|d| owners.contains(&d.id));
    }
    if devices.is_empty()
        && let Some(mac) = chassis_mac(n)
    {
        devices = input
            .by_mac
            .iter()
            .filter(|(m, _)| *m == mac)
            .map(|(_, d)| d)
            .collect();
        devices.sort_by_key(|d| d.id);
        devices.dedup_by_key(|d| d.id);
    }
    let device = match devices.as_slice() {
        [] => {
            return Resolved::Conflict(
                ConflictKind::LldpUnknownDevice,
                format!("names a switch NetBox does not have ({})", describe(n)),
            );
        }
        [d] => *d,
        _ => {
            return Resolved::Conflict(
                ConflictKind::LldpAmbiguous,
                format!(
                    "names {}, which matches {} NetBox devices",
                    describe(n),
                    devices.len()
                ),
            );
        }
    };
    match find_port(n, device.id, by_device).as_slice() {
        [] => Resolved::Conflict(
            ConflictKind::LldpUnknownPort,
            format!(
                "names {}, but NetBox device {} ({}) has no such interface",
                describe(n),
                device.name,
                device.id
            ),
        ),
        [p] => Resolved::Port(device, p),
        ports => Resolved::Conflict(
            ConflictKind::LldpAmbiguous,
            format!(
                "names {}, which matches {} interfaces of NetBox device {}",
                describe(n),
                ports.len(),
                device.name
            ),
        ),
    }
}

/// Computes the cables to create, those already there, and the conflicts.
pub fn plan_cables(input: &CableInput<'_>) -> CablePlan {
    let mut out = CablePlan::default();
    let mut by_device: HashMap<u64, Vec<&CableInterface>> = HashMap::new();
    for i in input.interfaces {
        by_device.entry(i.device_id).or_default().push(i);
    }
    for v in by_device.values_mut() {
        v.sort_by_key(|i| i.id);
    }
    // Interface ids already used by a planned cable → the pair it is in.
    let mut planned: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut machines: Vec<&MachineNeighbours> = input.machines.iter().collect();
    machines.sort_by_key(|m| (m.device_id, m.machine_id));
    for m in machines {
        let conflict = |kind: ConflictKind, message: String| Conflict {
            kind,
            device_id: Some(m.device_id),
            machine_id: Some(m.machine_id),
            message,
        };
        let own = by_device
            .get(&m.device_id)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        // One local interface, one wire: group its neighbours.
        let mut per_iface: Vec<(&str, Vec<&Neighbour>)> = Vec::new();
        for n in &m.neighbours {
            match per_iface.iter_mut().find(|(i, _)| *i == n.interface) {
                Some((_, v)) => v.push(n),
                None => per_iface.push((n.interface.as_str(), vec![n])),
            }
        }
        per_iface.sort_by(|a, b| a.0.cmp(b.0));
        for (kernel, neighbours) in per_iface {
            let resolved: Vec<Resolved<'_>> = neighbours
                .iter()
                .map(|n| resolve(n, input, &by_device))
                .collect();
            let mut ports: Vec<(&NamedDevice, &CableInterface)> = resolved
                .iter()
                .filter_map(|r| match r {
                    Resolved::Port(d, p) => Some((*d, *p)),
                    Resolved::Conflict(..) => None,
                })
                .collect();
            ports.sort_by_key(|(_, p)| p.id);
            ports.dedup_by_key(|(_, p)| p.id);
            let (device, port) = match (ports.as_slice(), neighbours.len()) {
                ([one], 1) => *one,
                ([], 1) => {
                    if let Some(Resolved::Conflict(kind, msg)) = resolved.into_iter().next() {
                        out.conflicts.push(conflict(
                            kind,
                            format!("LLDP on {kernel} of machine {} {msg}", m.hostname),
                        ));
                    }
                    continue;
                }
                _ => {
                    // Several different neighbours on one NIC (a hub, an
                    // unmanaged switch in between): no single wire to draw.
                    let heard: Vec<String> = neighbours.iter().map(|n| describe(n)).collect();
                    out.conflicts.push(conflict(
                        ConflictKind::LldpAmbiguous,
                        format!(
                            "LLDP on {kernel} of machine {} hears {} neighbours ({}); no cable is written",
                            m.hostname,
                            neighbours.len(),
                            heard.join("; ")
                        ),
                    ));
                    continue;
                }
            };
            let Some(local) = machine_interface(m, kernel, own) else {
                out.skipped.push(CableSkip {
                    machine_id: m.machine_id,
                    interface: kernel.to_string(),
                    reason: format!(
                        "NetBox device {} has no interface with {kernel}'s MAC or name yet",
                        m.device_id
                    ),
                });
                continue;
            };
            if local.id == port.id {
                out.skipped.push(CableSkip {
                    machine_id: m.machine_id,
                    interface: kernel.to_string(),
                    reason: "the neighbour is the interface itself".into(),
                });
                continue;
            }
            let port_label = format!("{} {}", device.name, port.name);
            if local.cable.is_some() {
                if peer_is(&local.link_peers, port.id)
                    || peer_is(&local.connected_endpoints, port.id)
                {
                    out.unchanged += 1;
                } else {
                    out.conflicts.push(conflict(
                        ConflictKind::CableOnMachineInterface,
                        format!(
                            "interface {} of machine {} is cabled in NetBox to {}, but LLDP hears {port_label}",
                            local.name,
                            m.hostname,
                            peers_label(&local.link_peers)
                        ),
                    ));
                }
                continue;
            }
            if port.cable.is_some() {
                out.conflicts.push(conflict(
                    ConflictKind::CableOnSwitchInterface,
                    format!(
                        "LLDP puts interface {} of machine {} on {port_label}, which NetBox cables to {}",
                        local.name,
                        m.hostname,
                        peers_label(&port.link_peers)
                    ),
                ));
                continue;
            }
            let pair = (local.id.min(port.id), local.id.max(port.id));
            let clash = [local.id, port.id]
                .iter()
                .find_map(|i| planned.get(i).filter(|p| **p != pair).copied());
            if let Some(other) = clash {
                out.conflicts.push(conflict(
                    ConflictKind::LldpAmbiguous,
                    format!(
                        "LLDP puts interface {} of machine {} on {port_label}, which another interface's LLDP also names (interfaces {} and {})",
                        local.name, m.hostname, other.0, other.1
                    ),
                ));
                continue;
            }
            if planned.contains_key(&local.id) {
                // Two machines hearing each other: one cable.
                continue;
            }
            planned.insert(local.id, pair);
            planned.insert(port.id, pair);
            out.create.push(CableCreate {
                machine_id: m.machine_id,
                device_id: m.device_id,
                interface_id: local.id,
                interface: local.name.clone(),
                peer_device_id: device.id,
                peer_device: device.name.clone(),
                peer_interface_id: port.id,
                peer_interface: port.name.clone(),
            });
        }
    }
    out
}

fn peer_from_json(v: &Value, object_type: &str) -> Option<Peer> {
    let o = v.as_object()?;
    let id = o.get("id")?.as_u64()?;
    let name = o
        .get("name")
        .or_else(|| o.get("display"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    let label = match o
        .get("device")
        .and_then(|d| d.get("name").or_else(|| d.get("display")))
        .and_then(Value::as_str)
    {
        Some(dev) => format!("{dev} {name}"),
        None => format!("{object_type} {name}"),
    };
    Some(Peer {
        object_type: object_type.to_string(),
        id,
        label,
    })
}

fn peers_from_json(o: &serde_json::Map<String, Value>, list: &str, kind: &str) -> Vec<Peer> {
    let object_type = o.get(kind).and_then(Value::as_str).unwrap_or("");
    o.get(list)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| peer_from_json(p, object_type))
                .collect()
        })
        .unwrap_or_default()
}

/// Decodes one interface of `/api/dcim/interfaces/` read with
/// `CABLE_INTERFACE_FIELDS`.
pub fn cable_interface_from_json(v: &Value) -> Result<CableInterface, String> {
    let o = v.as_object().ok_or("an interface is not a JSON object")?;
    let id = o
        .get("id")
        .and_then(Value::as_u64)
        .ok_or("an interface has no numeric id")?;
    let device_id = crate::model::nested_id(o.get("device")).ok_or("an interface has no device")?;
    let macs = o
        .get("mac_addresses")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| m.get("mac_address")?.as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    Ok(CableInterface {
        id,
        device_id,
        name: o
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        macs,
        cable: crate::model::nested_id(o.get("cable")),
        link_peers: peers_from_json(o, "link_peers", "link_peers_type"),
        connected_endpoints: peers_from_json(o, "connected_endpoints", "connected_endpoints_type"),
    })
}

/// Decodes a device of `/api/dcim/devices/?fields=id,name`.
pub fn named_device_from_json(v: &Value) -> Result<NamedDevice, String> {
    let id = v
        .get("id")
        .and_then(Value::as_u64)
        .ok_or("a device has no numeric id")?;
    Ok(NamedDevice {
        id,
        name: v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    })
}

#[cfg(test)]
mod tests;

/// Fields of a machine's interface that cable planning reads: with the end
/// of its cable path, to see a cable through patch panels as unchanged.
pub const CABLE_INTERFACE_FIELDS: &str = "id,name,device,mac_addresses,cable,link_peers,link_peers_type,connected_endpoints,connected_endpoints_type";
/// A switch port's: the path's end is not needed, and NetBox takes about
/// twice as long to answer with it.
pub const PORT_INTERFACE_FIELDS: &str =
    "id,name,device,mac_addresses,cable,link_peers,link_peers_type";
/// Names or MACs per lookup query (keeps URLs short).
const VALUES_PER_QUERY: usize = 100;
/// Cables per bulk POST. NetBox traces each new cable's path as it saves
/// it: ~190 ms a cable on a loaded 2-core machine, so 200 in one request
/// outlasted a 30 s timeout; 50 stay around 10 s.
pub const CABLES_PER_REQUEST: usize = 50;

fn decode_err(path: &str) -> impl Fn(String) -> Error + '_ {
    move |message| Error::Decode {
        path: path.to_string(),
        message,
    }
}

impl NetBoxClient {
    /// Devices whose name is one of `names`, ignoring case (any site: the
    /// switches are usually outside the sync's scope).
    pub async fn devices_named(&self, names: &[String]) -> Result<Vec<NamedDevice>> {
        let path = "api/dcim/devices/";
        let mut out = Vec::new();
        for chunk in names.chunks(VALUES_PER_QUERY) {
            let mut q: Vec<(String, String)> = chunk
                .iter()
                .map(|n| ("name__ie".to_string(), n.clone()))
                .collect();
            q.push(("fields".into(), "id,name".into()));
            for v in self.list_all(path, &q).await? {
                out.push(named_device_from_json(&v).map_err(decode_err(path))?);
            }
        }
        out.sort_by_key(|d| d.id);
        out.dedup_by_key(|d| d.id);
        Ok(out)
    }

    /// The devices whose interfaces hold one of `macs` (chassis IDs).
    pub async fn devices_with_macs(&self, macs: &[MacAddr]) -> Result<Vec<(MacAddr, NamedDevice)>> {
        let path = "api/dcim/mac-addresses/";
        let mut out = Vec::new();
        for chunk in macs.chunks(VALUES_PER_QUERY) {
            let mut q: Vec<(String, String)> = chunk
                .iter()
                .map(|m| ("mac_address".to_string(), m.to_string()))
                .collect();
            q.push((
                "fields".into(),
                "id,mac_address,assigned_object_type,assigned_object".into(),
            ));
            for v in self.list_all(path, &q).await? {
                if v.get("assigned_object_type").and_then(Value::as_str) != Some("dcim.interface") {
                    continue;
                }
                let mac = v
                    .get("mac_address")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<MacAddr>().ok());
                let dev = v.pointer("/assigned_object/device");
                if let (Some(mac), Some(dev)) = (mac, dev) {
                    out.push((mac, named_device_from_json(dev).map_err(decode_err(path))?));
                }
            }
        }
        Ok(out)
    }

    /// The interfaces of `device_ids` with their cables and link peers, and
    /// with `endpoints` the ends of their cable paths too.
    pub async fn cable_interfaces(
        &self,
        device_ids: &[u64],
        endpoints: bool,
    ) -> Result<Vec<CableInterface>> {
        let fields = if endpoints {
            CABLE_INTERFACE_FIELDS
        } else {
            PORT_INTERFACE_FIELDS
        };
        let path = "api/dcim/interfaces/";
        let mut ids = device_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut out = Vec::new();
        for chunk in ids.chunks(crate::client::IDS_PER_QUERY) {
            let mut q: Vec<(String, String)> = chunk
                .iter()
                .map(|id| ("device_id".to_string(), id.to_string()))
                .collect();
            q.push(("fields".into(), fields.into()));
            for v in self.list_all(path, &q).await? {
                out.push(cable_interface_from_json(&v).map_err(decode_err(path))?);
            }
        }
        Ok(out)
    }

    /// Creates `cables` with one bulk POST (send at most
    /// `CABLES_PER_REQUEST` at a time). NetBox applies a bulk create
    /// whole or not at all; a POST that timed out may still have been
    /// applied, and is not repeated: the next sync sees those cables as
    /// unchanged (NetBox refuses a second cable on an occupied interface).
    pub async fn create_cables(&self, cables: &[CableCreate]) -> Result<()> {
        let body = Value::Array(cables.iter().map(CableCreate::to_json).collect());
        self.send(Method::POST, "api/dcim/cables/", &[], Some(&body))
            .await?;
        Ok(())
    }
}
