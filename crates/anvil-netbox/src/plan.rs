//! The reconcile plan: pure, no I/O, no clock.
//!
//! Ownership (see `docs/netbox-sync.md`):
//! * NetBox owns what exists and where: the device name (Anvil's hostname),
//!   site/location/rack/position/role/platform (kept in the machine's
//!   `facts.netbox`), tags, the BMC address (`oob_ip`) and the intended
//!   primary IPv4 (the PXE interface's reserved address).
//! * Anvil owns what it discovers and does: the serial, interfaces and MACs
//!   it found, the provisioning state (a custom field) and, once Anvil has
//!   reported a state, the device status mapped from the lifecycle.
//!
//! A disagreement neither side may settle (a MAC NetBox puts on one device
//! and Anvil sees on another machine, two different serials …) becomes a
//! `Conflict`, and neither side is written for it.

use crate::model::{NbDevice, NbSnapshot};
use anvil_types::{Hostname, MacAddr, Machine, MachineState};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use utoipa::ToSchema;
use uuid::Uuid;

/// Which NetBox objects carry Anvil's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The device custom field holding Anvil's provisioning state.
    pub state_field: String,
    /// The device interface that is the BMC (never imported as a boot
    /// interface; interfaces marked `mgmt_only` are skipped too).
    pub bmc_interface: String,
    /// Write LLDP neighbours as cables (`cables.rs`).
    pub lldp_cables: bool,
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping {
            state_field: "anvil_state".into(),
            bmc_interface: "bmc".into(),
            lldp_cables: true,
        }
    }
}

/// The NetBox device status that stands for a lifecycle state.
pub fn status_for_state(s: MachineState) -> &'static str {
    match s {
        MachineState::New => "planned",
        MachineState::Commissioning => "staged",
        MachineState::Ready => "inventory",
        MachineState::Allocated => "staged",
        MachineState::Deploying => "staged",
        MachineState::Deployed => "active",
        MachineState::Releasing => "decommissioning",
        MachineState::Rescue => "offline",
        MachineState::Broken => "failed",
        MachineState::Failed => "failed",
    }
}

/// An interface Anvil takes over from NetBox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImportInterface {
    pub name: String,
    #[schema(value_type = String)]
    pub mac: MacAddr,
    pub pxe: bool,
    pub ipv4: Option<String>,
}

/// A device that becomes a new machine in Anvil.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineImport {
    pub device_id: u64,
    pub hostname: String,
    pub serial: Option<String>,
    pub tags: Vec<String>,
    /// The BMC address from `oob_ip`.
    pub bmc_address: Option<String>,
    pub interfaces: Vec<ImportInterface>,
    /// `facts.netbox`: where the device is.
    #[schema(value_type = Object)]
    pub placement: Value,
}

/// NetBox-owned changes to an existing machine. `None` = leave as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineUpdate {
    pub machine_id: Uuid,
    pub device_id: u64,
    /// The machine was not linked to this device yet (matched by name or MAC).
    pub link: bool,
    pub hostname: Option<String>,
    pub tags: Option<Vec<String>>,
    pub bmc_address: Option<String>,
    pub serial: Option<String>,
    pub add_interfaces: Vec<ImportInterface>,
    /// (PXE interface's MAC, reserved IPv4) from `primary_ip4`.
    #[schema(value_type = Option<Vec<String>>)]
    pub set_ipv4: Option<(MacAddr, String)>,
    #[schema(value_type = Option<Object>)]
    pub placement: Option<Value>,
    /// Names of the fields that change, for events and reports.
    pub changes: Vec<String>,
}

/// Anvil-owned values written to one device (one item of a bulk PATCH).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DevicePatch {
    pub device_id: u64,
    pub serial: Option<String>,
    pub status: Option<String>,
    pub state_field: Option<String>,
}

impl DevicePatch {
    /// The item of `PATCH /api/dcim/devices/` (a list of these).
    pub fn to_json(&self, mapping: &Mapping) -> Value {
        let mut o = serde_json::Map::new();
        o.insert("id".into(), json!(self.device_id));
        if let Some(s) = &self.serial {
            o.insert("serial".into(), json!(s));
        }
        if let Some(s) = &self.status {
            o.insert("status".into(), json!(s));
        }
        if let Some(s) = &self.state_field {
            o.insert(
                "custom_fields".into(),
                json!({ mapping.state_field.as_str(): s }),
            );
        }
        Value::Object(o)
    }
}

/// An interface Anvil found that NetBox lacks: created with its MAC object,
/// which is made the primary MAC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InterfaceCreate {
    pub device_id: u64,
    pub name: String,
    #[schema(value_type = String)]
    pub mac: MacAddr,
}

/// A MAC Anvil found on an interface NetBox has without any MAC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MacCreate {
    pub device_id: u64,
    pub interface_id: u64,
    #[schema(value_type = String)]
    pub mac: MacAddr,
}

/// Everything to write to NetBox, grouped for its bulk endpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NetBoxWrites {
    pub devices: Vec<DevicePatch>,
    pub interfaces: Vec<InterfaceCreate>,
    pub macs: Vec<MacCreate>,
}

impl NetBoxWrites {
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.interfaces.is_empty() && self.macs.is_empty()
    }

    /// Objects written (a device patch counts once).
    pub fn len(&self) -> usize {
        self.devices.len() + self.interfaces.len() + self.macs.len()
    }

    /// Devices touched by these writes.
    pub fn device_ids(&self) -> HashSet<u64> {
        self.devices
            .iter()
            .map(|d| d.device_id)
            .chain(self.interfaces.iter().map(|i| i.device_id))
            .chain(self.macs.iter().map(|m| m.device_id))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// Anvil sees a MAC on a machine linked to another NetBox device.
    MacOnOtherDevice,
    /// NetBox puts a MAC on a device; Anvil has it on another machine.
    MacOnOtherMachine,
    /// NetBox lists one MAC on two devices.
    DuplicateMacInNetbox,
    /// Same interface name, different MACs.
    InterfaceMacMismatch,
    /// Both sides have a serial, and they differ.
    SerialMismatch,
    /// The device name is not a valid hostname (or missing).
    InvalidName,
    /// The device name is the hostname of another Anvil machine.
    HostnameTaken,
    /// Several unlinked machines match one device.
    AmbiguousMatch,
    /// A linked device is no longer in NetBox (or no longer in scope).
    DeviceGone,
    /// An LLDP neighbour names a switch NetBox does not have.
    LldpUnknownDevice,
    /// An LLDP neighbour names a port its NetBox device does not have.
    LldpUnknownPort,
    /// An LLDP neighbour matches several NetBox devices or ports, one NIC
    /// hears several neighbours, or two NICs name one port.
    LldpAmbiguous,
    /// The machine's interface is cabled in NetBox to something other than
    /// the port LLDP hears.
    CableOnMachineInterface,
    /// The port LLDP hears is cabled in NetBox to something else.
    CableOnSwitchInterface,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Conflict {
    pub kind: ConflictKind,
    pub device_id: Option<u64>,
    pub machine_id: Option<Uuid>,
    pub message: String,
}

/// What a sync will do (dry run) or did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    pub create: Vec<MachineImport>,
    pub update: Vec<MachineUpdate>,
    pub netbox: NetBoxWrites,
    /// Devices already in step on both sides.
    pub unchanged: u64,
    pub conflicts: Vec<Conflict>,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.netbox.is_empty()
    }
}

/// What the plan is computed from.
pub struct PlanInput<'a> {
    pub netbox: &'a NbSnapshot,
    /// Every machine in Anvil (matching needs the MACs and hostnames of all).
    pub machines: &'a [Machine],
    /// machine id → NetBox device id.
    pub links: &'a HashMap<Uuid, u64>,
    pub mapping: &'a Mapping,
}

/// The host part of a BMC address (`10.0.0.5`, `https://10.0.0.5:8443/…`).
fn bmc_host(address: &str) -> &str {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match host_port.rsplit_once(':') {
        // One colon: host:port. More: a bare IPv6 address.
        Some((h, _)) if !h.contains(':') => h,
        _ => host_port,
    }
}

/// An interface name Anvil accepts: 1–32 printable characters without '/'.
fn anvil_iface_name(name: &str, fallback: usize) -> String {
    let n: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '/' {
                c
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    if n.is_empty() {
        format!("eth{fallback}")
    } else {
        n
    }
}

fn valid_tags(tags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = tags
        .iter()
        .filter(|t| {
            !t.is_empty()
                && t.len() <= 64
                && t.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'=')
                })
        })
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

fn placement(d: &NbDevice) -> Value {
    json!({
        "device_id": d.id,
        "site": d.site,
        "location": d.location,
        "rack": d.rack,
        "position": d.position,
        "role": d.role,
        "platform": d.platform,
    })
}

struct Index<'a> {
    machines: HashMap<Uuid, &'a Machine>,
    by_mac: HashMap<MacAddr, Uuid>,
    by_hostname: HashMap<&'a str, Uuid>,
    /// device id → machine id
    linked: HashMap<u64, Uuid>,
    /// MAC → NetBox device holding it (boot interfaces only)
    nb_mac_owner: HashMap<MacAddr, u64>,
    /// MACs NetBox has on two devices: nobody acts on them.
    nb_mac_duplicate: HashSet<MacAddr>,
}

impl PlanInput<'_> {
    fn is_boot_interface(&self, i: &crate::model::NbInterface) -> bool {
        !i.mgmt_only && i.name != self.mapping.bmc_interface
    }
}

/// Computes what to change on both sides.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut out = Plan::default();
    let mut ix = Index {
        machines: input.machines.iter().map(|m| (m.id, m)).collect(),
        by_mac: HashMap::new(),
        by_hostname: input
            .machines
            .iter()
            .map(|m| (m.hostname.as_str(), m.id))
            .collect(),
        linked: input.links.iter().map(|(m, d)| (*d, *m)).collect(),
        nb_mac_owner: HashMap::new(),
        nb_mac_duplicate: HashSet::new(),
    };
    for m in input.machines {
        for i in &m.interfaces {
            ix.by_mac.insert(i.mac, m.id);
        }
    }
    let mut devices: Vec<&NbDevice> = input.netbox.devices.iter().collect();
    devices.sort_by_key(|d| d.id);
    for d in &devices {
        for i in d.interfaces.iter().filter(|i| input.is_boot_interface(i)) {
            for (_, mac) in &i.macs {
                match ix.nb_mac_owner.get(mac) {
                    Some(other) if *other != d.id => {
                        if ix.nb_mac_duplicate.insert(*mac) {
                            out.conflicts.push(Conflict {
                                kind: ConflictKind::DuplicateMacInNetbox,
                                device_id: Some(d.id),
                                machine_id: None,
                                message: format!(
                                    "NetBox has MAC {mac} on device {other} and on device {}",
                                    d.id
                                ),
                            });
                        }
                    }
                    _ => {
                        ix.nb_mac_owner.insert(*mac, d.id);
                    }
                }
            }
        }
    }
    // Hostnames given out by this plan (two new devices with one name).
    let mut claimed_hostnames: HashSet<String> = HashSet::new();
    for d in &devices {
        plan_device(input, &ix, d, &mut out, &mut claimed_hostnames);
    }
    if input.netbox.complete {
        let present: HashSet<u64> = devices.iter().map(|d| d.id).collect();
        let mut gone: Vec<(&Uuid, &u64)> = input
            .links
            .iter()
            .filter(|(_, d)| !present.contains(d))
            .collect();
        gone.sort();
        for (m, d) in gone {
            let name = ix.machines.get(m).map_or("?", |m| m.hostname.as_str());
            out.conflicts.push(Conflict {
                kind: ConflictKind::DeviceGone,
                device_id: Some(*d),
                machine_id: Some(*m),
                message: format!(
                    "machine {name} is linked to NetBox device {d}, which is no longer in NetBox or out of scope"
                ),
            });
        }
    }
    out
}

/// Finds the Anvil machine of a device: its link, else an unlinked machine
/// with its name, else an unlinked machine with one of its MACs.
fn match_machine(
    input: &PlanInput<'_>,
    ix: &Index<'_>,
    d: &NbDevice,
    hostname: Option<&str>,
) -> Result<Option<Uuid>, Conflict> {
    if let Some(m) = ix.linked.get(&d.id) {
        return Ok(Some(*m));
    }
    let unlinked = |m: &Uuid| !input.links.contains_key(m);
    if let Some(h) = hostname
        && let Some(m) = ix.by_hostname.get(h)
        && unlinked(m)
    {
        return Ok(Some(*m));
    }
    let mut found: Vec<Uuid> = d
        .interfaces
        .iter()
        .filter(|i| input.is_boot_interface(i))
        .flat_map(|i| i.macs.iter().map(|(_, mac)| mac))
        .filter(|mac| !ix.nb_mac_duplicate.contains(mac))
        .filter_map(|mac| ix.by_mac.get(mac).copied())
        .filter(unlinked)
        .collect();
    found.sort();
    found.dedup();
    match found.len() {
        0 => Ok(None),
        1 => Ok(Some(found[0])),
        _ => Err(Conflict {
            kind: ConflictKind::AmbiguousMatch,
            device_id: Some(d.id),
            machine_id: None,
            message: format!(
                "NetBox device {} has MACs of {} different Anvil machines",
                d.id,
                found.len()
            ),
        }),
    }
}

fn plan_device(
    input: &PlanInput<'_>,
    ix: &Index<'_>,
    d: &NbDevice,
    out: &mut Plan,
    claimed: &mut HashSet<String>,
) {
    let hostname = match d.name.as_deref().map(str::parse::<Hostname>) {
        Some(Ok(h)) => Some(h.to_string()),
        Some(Err(_)) | None => None,
    };
    let matched = match match_machine(input, ix, d, hostname.as_deref()) {
        Ok(m) => m,
        Err(c) => {
            out.conflicts.push(c);
            return;
        }
    };
    let Some(hostname) = hostname else {
        out.conflicts.push(Conflict {
            kind: ConflictKind::InvalidName,
            device_id: Some(d.id),
            machine_id: matched,
            message: format!(
                "NetBox device {} has no name usable as a hostname ({:?})",
                d.id,
                d.name.as_deref().unwrap_or("")
            ),
        });
        return;
    };
    match matched.and_then(|id| ix.machines.get(&id)) {
        None => plan_import(input, ix, d, hostname, out, claimed),
        Some(m) => plan_update(input, ix, d, m, hostname, out, claimed),
    }
}

/// NetBox boot interfaces with a MAC, as Anvil interfaces. MACs Anvil knows
/// on another machine (or NetBox has twice) are left out, with a conflict.
fn importable_interfaces(
    input: &PlanInput<'_>,
    ix: &Index<'_>,
    d: &NbDevice,
    machine: Option<Uuid>,
    out: &mut Plan,
) -> Vec<ImportInterface> {
    let mut nb: Vec<&crate::model::NbInterface> = d
        .interfaces
        .iter()
        .filter(|i| input.is_boot_interface(i))
        .collect();
    nb.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    let mut res = Vec::new();
    let mut names = HashSet::new();
    for (n, i) in nb.into_iter().enumerate() {
        let Some(mac) = i.mac() else { continue };
        if ix.nb_mac_duplicate.contains(&mac) {
            continue;
        }
        if let Some(owner) = ix.by_mac.get(&mac)
            && Some(*owner) != machine
        {
            let name = ix.machines.get(owner).map_or("?", |m| m.hostname.as_str());
            out.conflicts.push(Conflict {
                kind: ConflictKind::MacOnOtherMachine,
                device_id: Some(d.id),
                machine_id: Some(*owner),
                message: format!(
                    "NetBox puts MAC {mac} on device {} ({}), Anvil has it on machine {name}",
                    d.id,
                    d.name.as_deref().unwrap_or("")
                ),
            });
            continue;
        }
        let mut name = anvil_iface_name(&i.name, n);
        if !names.insert(name.clone()) {
            name = format!("{}-{}", &name[..name.len().min(20)], i.id);
            names.insert(name.clone());
        }
        res.push(ImportInterface {
            name,
            mac,
            pxe: false,
            ipv4: None,
        });
    }
    res
}

fn plan_import(
    input: &PlanInput<'_>,
    ix: &Index<'_>,
    d: &NbDevice,
    hostname: String,
    out: &mut Plan,
    claimed: &mut HashSet<String>,
) {
    if let Some(owner) = ix.by_hostname.get(hostname.as_str()) {
        // The name's machine is linked to another device.
        out.conflicts.push(Conflict {
            kind: ConflictKind::HostnameTaken,
            device_id: Some(d.id),
            machine_id: Some(*owner),
            message: format!(
                "NetBox device {} is named {hostname}, which is the hostname of a machine linked to another device",
                d.id
            ),
        });
        return;
    }
    if !claimed.insert(hostname.clone()) {
        out.conflicts.push(Conflict {
            kind: ConflictKind::HostnameTaken,
            device_id: Some(d.id),
            machine_id: None,
            message: format!("two NetBox devices in scope are named {hostname}"),
        });
        return;
    }
    let mut interfaces = importable_interfaces(input, ix, d, None, out);
    if let Some(first) = interfaces.first_mut() {
        first.pxe = true;
        first.ipv4 = d.primary_ip4.clone();
    }
    out.create.push(MachineImport {
        device_id: d.id,
        hostname,
        serial: (!d.serial.is_empty()).then(|| d.serial.clone()),
        tags: valid_tags(&d.tags),
        bmc_address: d.oob_ip.clone(),
        interfaces,
        placement: placement(d),
    });
    // A new machine is `new`: report that, but leave the status alone (an
    // imported production server must not turn `planned`).
    if d.state_field.as_deref() != Some(MachineState::New.as_str()) {
        out.netbox.devices.push(DevicePatch {
            device_id: d.id,
            serial: None,
            status: None,
            state_field: Some(MachineState::New.as_str().into()),
        });
    }
}

fn plan_update(
    input: &PlanInput<'_>,
    ix: &Index<'_>,
    d: &NbDevice,
    m: &Machine,
    hostname: String,
    out: &mut Plan,
    claimed: &mut HashSet<String>,
) {
    let conflicts_before = out.conflicts.len();
    let mut up = MachineUpdate {
        machine_id: m.id,
        device_id: d.id,
        link: !input.links.contains_key(&m.id),
        hostname: None,
        tags: None,
        bmc_address: None,
        serial: None,
        add_interfaces: Vec::new(),
        set_ipv4: None,
        placement: None,
        changes: Vec::new(),
    };
    let mut patch = DevicePatch {
        device_id: d.id,
        serial: None,
        status: None,
        state_field: None,
    };

    // NetBox-owned fields.
    if m.hostname != hostname {
        match ix.by_hostname.get(hostname.as_str()) {
            Some(other) if *other != m.id => out.conflicts.push(Conflict {
                kind: ConflictKind::HostnameTaken,
                device_id: Some(d.id),
                machine_id: Some(m.id),
                message: format!(
                    "NetBox renames machine {} to {hostname}, which another Anvil machine already has",
                    m.hostname
                ),
            }),
            _ if !claimed.insert(hostname.clone()) => {}
            _ => {
                up.hostname = Some(hostname);
                up.changes.push("hostname".into());
            }
        }
    }
    let tags = valid_tags(&d.tags);
    if m.tags != tags {
        up.tags = Some(tags);
        up.changes.push("tags".into());
    }
    if let Some(oob) = &d.oob_ip
        && m.bmc.as_ref().map(|b| bmc_host(&b.address)) != Some(oob.as_str())
    {
        up.bmc_address = Some(oob.clone());
        up.changes.push("bmc".into());
    }
    let place = placement(d);
    if m.facts.get("netbox") != Some(&place) {
        up.placement = Some(place);
        up.changes.push("facts.netbox".into());
    }

    // The serial: Anvil's once it has one; NetBox's fills an empty one.
    match (m.serial.as_deref(), d.serial.as_str()) {
        (None, "") => {}
        (None, nb) => {
            up.serial = Some(nb.to_string());
            up.changes.push("serial".into());
        }
        (Some(a), "") => patch.serial = Some(a.to_string()),
        (Some(a), nb) if a.eq_ignore_ascii_case(nb) => {}
        (Some(a), nb) => out.conflicts.push(Conflict {
            kind: ConflictKind::SerialMismatch,
            device_id: Some(d.id),
            machine_id: Some(m.id),
            message: format!(
                "machine {} has serial {a:?}, NetBox device {} has {nb:?}",
                m.hostname, d.id
            ),
        }),
    }

    // Interfaces: NetBox's MACs that Anvil lacks are imported …
    let anvil_macs: HashMap<MacAddr, &str> = m
        .interfaces
        .iter()
        .map(|i| (i.mac, i.name.as_str()))
        .collect();
    let mut taken_names: HashSet<String> = m.interfaces.iter().map(|i| i.name.clone()).collect();
    for imp in importable_interfaces(input, ix, d, Some(m.id), out) {
        if anvil_macs.contains_key(&imp.mac) {
            continue;
        }
        if taken_names.contains(&imp.name) {
            out.conflicts.push(Conflict {
                kind: ConflictKind::InterfaceMacMismatch,
                device_id: Some(d.id),
                machine_id: Some(m.id),
                message: format!(
                    "interface {} of machine {} has another MAC in Anvil than NetBox's {}",
                    imp.name, m.hostname, imp.mac
                ),
            });
            continue;
        }
        taken_names.insert(imp.name.clone());
        up.add_interfaces.push(imp);
    }
    if !up.add_interfaces.is_empty() {
        if !m.interfaces.iter().any(|i| i.pxe) {
            up.add_interfaces[0].pxe = true;
        }
        up.changes.push("interfaces".into());
    }
    // … and the MACs Anvil found that NetBox lacks are written back.
    let nb_macs: HashSet<MacAddr> = d
        .interfaces
        .iter()
        .flat_map(|i| i.macs.iter().map(|(_, mac)| *mac))
        .collect();
    for i in &m.interfaces {
        if nb_macs.contains(&i.mac) || ix.nb_mac_duplicate.contains(&i.mac) {
            continue;
        }
        if let Some(other) = ix.nb_mac_owner.get(&i.mac) {
            out.conflicts.push(Conflict {
                kind: ConflictKind::MacOnOtherDevice,
                device_id: Some(d.id),
                machine_id: Some(m.id),
                message: format!(
                    "Anvil sees MAC {} on machine {}, NetBox puts it on device {other}",
                    i.mac, m.hostname
                ),
            });
            continue;
        }
        match d.interfaces.iter().find(|n| n.name == i.name) {
            // Its MAC differs: reported above when NetBox's MAC was importable.
            Some(n) if n.mac().is_some() => {}
            Some(n) => out.netbox.macs.push(MacCreate {
                device_id: d.id,
                interface_id: n.id,
                mac: i.mac,
            }),
            None => out.netbox.interfaces.push(InterfaceCreate {
                device_id: d.id,
                name: i.name.clone(),
                mac: i.mac,
            }),
        }
    }

    // The intended primary IPv4 is the PXE interface's reserved address.
    if let Some(ip) = &d.primary_ip4 {
        let pxe = m
            .interfaces
            .iter()
            .find(|i| i.pxe)
            .map(|i| (i.mac, i.ipv4.as_deref()))
            .or_else(|| {
                up.add_interfaces
                    .iter()
                    .find(|i| i.pxe)
                    .map(|i| (i.mac, None))
            });
        if let Some((mac, current)) = pxe
            && current != Some(ip.as_str())
        {
            up.set_ipv4 = Some((mac, ip.clone()));
            up.changes.push("ipv4".into());
        }
    }

    // The provisioning state, and the status once Anvil has reported one.
    let state = m.state.as_str();
    if d.state_field.as_deref() != Some(state) {
        patch.state_field = Some(state.into());
        let status = status_for_state(m.state);
        if d.state_field.is_some() && d.status.as_deref() != Some(status) {
            patch.status = Some(status.into());
        }
    }

    let patched = patch.serial.is_some() || patch.status.is_some() || patch.state_field.is_some();
    if patched {
        out.netbox.devices.push(patch);
    }
    let wrote_back = patched
        || out.netbox.macs.iter().any(|x| x.device_id == d.id)
        || out.netbox.interfaces.iter().any(|x| x.device_id == d.id);
    if !up.changes.is_empty() || up.link {
        out.update.push(up);
    } else if !wrote_back && out.conflicts.len() == conflicts_before {
        out.unchanged += 1;
    }
}

/// Conflicts grouped by kind (for the status page and reports).
pub fn conflict_counts(conflicts: &[Conflict]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for c in conflicts {
        let k = serde_json::to_value(c.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests;
