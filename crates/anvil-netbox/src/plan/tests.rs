use super::*;
use crate::model::NbInterface;
use anvil_types::{Bmc, BmcDriver, Interface};
use time::OffsetDateTime;

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn nb_iface(id: u64, dev: u64, name: &str, m: Option<&str>) -> NbInterface {
    NbInterface {
        id,
        device_id: dev,
        name: name.into(),
        mgmt_only: name == "bmc",
        macs: m.map(|m| vec![(id + 1000, mac(m))]).unwrap_or_default(),
        primary_mac: m.map(mac),
    }
}

fn device(id: u64, name: &str, macs: &[(&str, &str)]) -> NbDevice {
    NbDevice {
        id,
        name: Some(name.into()),
        serial: String::new(),
        status: Some("active".into()),
        site: Some("dc1".into()),
        location: None,
        rack: Some("r1".into()),
        position: Some(3.0),
        role: Some("compute".into()),
        platform: None,
        tags: vec!["prod".into()],
        oob_ip: Some("10.0.0.1".into()),
        primary_ip4: None,
        state_field: None,
        interfaces: macs
            .iter()
            .enumerate()
            .map(|(n, (name, m))| nb_iface(id * 100 + n as u64, id, name, Some(m)))
            .collect(),
    }
}

fn machine(name: &str, macs: &[(&str, &str)]) -> Machine {
    let at = OffsetDateTime::UNIX_EPOCH;
    Machine {
        id: Uuid::now_v7(),
        hostname: name.into(),
        state: MachineState::New,
        state_reason: None,
        architecture: None,
        firmware: None,
        vendor: None,
        model: None,
        serial: None,
        tags: vec![],
        facts: json!({}),
        interfaces: macs
            .iter()
            .enumerate()
            .map(|(n, (name, m))| Interface {
                id: Uuid::now_v7(),
                mac: mac(m),
                name: (*name).into(),
                pxe: n == 0,
                ipv4: None,
            })
            .collect(),
        bmc: None,
        power_state: None,
        power_checked_at: None,
        created_at: at,
        updated_at: at,
    }
}

/// Applies the import side of a plan the way the application layer does,
/// so idempotency can be checked on the next plan.
fn apply(
    plan: &Plan,
    nb: &mut NbSnapshot,
    machines: &mut Vec<Machine>,
    links: &mut HashMap<Uuid, u64>,
) {
    for c in &plan.create {
        let mut m = machine(&c.hostname, &[]);
        m.serial = c.serial.clone();
        m.tags = c.tags.clone();
        m.bmc = c.bmc_address.as_ref().map(|a| Bmc {
            driver: BmcDriver::Redfish,
            address: a.clone(),
            port: None,
            username: None,
            has_password: false,
            verify_tls: true,
        });
        m.facts = json!({ "netbox": c.placement });
        m.interfaces = c
            .interfaces
            .iter()
            .map(|i| Interface {
                id: Uuid::now_v7(),
                mac: i.mac,
                name: i.name.clone(),
                pxe: i.pxe,
                ipv4: i.ipv4.clone(),
            })
            .collect();
        links.insert(m.id, c.device_id);
        machines.push(m);
    }
    for u in &plan.update {
        let m = machines.iter_mut().find(|m| m.id == u.machine_id).unwrap();
        links.insert(m.id, u.device_id);
        if let Some(h) = &u.hostname {
            m.hostname = h.clone();
        }
        if let Some(t) = &u.tags {
            m.tags = t.clone();
        }
        if let Some(s) = &u.serial {
            m.serial = Some(s.clone());
        }
        if let Some(p) = &u.placement {
            m.facts = json!({ "netbox": p });
        }
        if let Some(a) = &u.bmc_address {
            m.bmc = Some(Bmc {
                driver: BmcDriver::Redfish,
                address: a.clone(),
                port: None,
                username: None,
                has_password: false,
                verify_tls: true,
            });
        }
        for i in &u.add_interfaces {
            m.interfaces.push(Interface {
                id: Uuid::now_v7(),
                mac: i.mac,
                name: i.name.clone(),
                pxe: i.pxe,
                ipv4: i.ipv4.clone(),
            });
        }
        if let Some((mac, ip)) = &u.set_ipv4 {
            m.interfaces
                .iter_mut()
                .find(|i| i.mac == *mac)
                .unwrap()
                .ipv4 = Some(ip.clone());
        }
    }
    // NetBox side.
    for p in &plan.netbox.devices {
        let d = nb.devices.iter_mut().find(|d| d.id == p.device_id).unwrap();
        if let Some(s) = &p.serial {
            d.serial = s.clone();
        }
        if let Some(s) = &p.status {
            d.status = Some(s.clone());
        }
        if let Some(s) = &p.state_field {
            d.state_field = Some(s.clone());
        }
    }
    for c in &plan.netbox.interfaces {
        let d = nb.devices.iter_mut().find(|d| d.id == c.device_id).unwrap();
        let id = 90_000 + d.interfaces.len() as u64;
        d.interfaces
            .push(nb_iface(id, d.id, &c.name, Some(&c.mac.to_string())));
    }
    for c in &plan.netbox.macs {
        let d = nb.devices.iter_mut().find(|d| d.id == c.device_id).unwrap();
        let i = d
            .interfaces
            .iter_mut()
            .find(|i| i.id == c.interface_id)
            .unwrap();
        i.macs.push((77, c.mac));
        i.primary_mac = Some(c.mac);
    }
}

fn run(nb: &NbSnapshot, machines: &[Machine], links: &HashMap<Uuid, u64>) -> Plan {
    let mapping = Mapping::default();
    plan(&PlanInput {
        netbox: nb,
        machines,
        links,
        mapping: &mapping,
    })
}

fn snapshot(devices: Vec<NbDevice>) -> NbSnapshot {
    NbSnapshot {
        devices,
        complete: true,
    }
}

#[test]
fn import_creates_machines_with_bmc_interfaces_and_macs_and_is_idempotent() {
    let mut d = device(
        1,
        "Node-1",
        &[("eth1", "02:00:00:00:00:02"), ("eth0", "02:00:00:00:00:01")],
    );
    d.interfaces
        .push(nb_iface(150, 1, "bmc", Some("02:00:00:00:00:ff")));
    d.serial = "SN1".into();
    d.primary_ip4 = Some("192.0.2.10".into());
    let mut nb = snapshot(vec![d]);
    let mut machines = vec![];
    let mut links = HashMap::new();
    let p = run(&nb, &machines, &links);
    assert_eq!(p.create.len(), 1);
    let c = &p.create[0];
    assert_eq!(c.hostname, "node-1", "hostnames are lower-case");
    assert_eq!(c.serial.as_deref(), Some("SN1"));
    assert_eq!(c.bmc_address.as_deref(), Some("10.0.0.1"));
    assert_eq!(c.tags, vec!["prod"]);
    let names: Vec<_> = c.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["eth0", "eth1"],
        "the BMC interface is not a boot interface"
    );
    assert!(c.interfaces[0].pxe && !c.interfaces[1].pxe);
    assert_eq!(c.interfaces[0].ipv4.as_deref(), Some("192.0.2.10"));
    assert_eq!(c.placement["rack"], "r1");
    // Anvil reports `new` but does not touch the status of an imported device.
    assert_eq!(
        p.netbox.devices,
        vec![DevicePatch {
            device_id: 1,
            serial: None,
            status: None,
            state_field: Some("new".into())
        }]
    );
    assert!(p.conflicts.is_empty());

    apply(&p, &mut nb, &mut machines, &mut links);
    let again = run(&nb, &machines, &links);
    assert!(again.is_noop(), "second run changes nothing: {again:?}");
    assert_eq!(again.unchanged, 1);
    assert!(again.conflicts.is_empty());
}

#[test]
fn state_changes_write_the_field_and_the_mapped_status() {
    let mut d = device(1, "n1", &[("eth0", "02:00:00:00:00:01")]);
    d.state_field = Some("new".into());
    d.status = Some("planned".into());
    let mut m = machine("n1", &[("eth0", "02:00:00:00:00:01")]);
    m.state = MachineState::Deployed;
    let links = HashMap::from([(m.id, 1)]);
    let p = run(&snapshot(vec![d.clone()]), std::slice::from_ref(&m), &links);
    assert_eq!(p.netbox.devices.len(), 1);
    assert_eq!(p.netbox.devices[0].status.as_deref(), Some("active"));
    assert_eq!(p.netbox.devices[0].state_field.as_deref(), Some("deployed"));
    let body = p.netbox.devices[0].to_json(&Mapping::default());
    assert_eq!(
        body,
        json!({"id": 1, "status": "active", "custom_fields": {"anvil_state": "deployed"}})
    );

    m.state = MachineState::Broken;
    let p = run(&snapshot(vec![d.clone()]), std::slice::from_ref(&m), &links);
    assert_eq!(p.netbox.devices[0].status.as_deref(), Some("failed"));

    // Status already right: only the field is written.
    d.status = Some("failed".into());
    let p = run(&snapshot(vec![d]), &[m], &links);
    assert_eq!(p.netbox.devices[0].status, None);
    assert_eq!(p.netbox.devices[0].state_field.as_deref(), Some("broken"));
}

#[test]
fn every_state_has_a_netbox_status() {
    let valid = [
        "offline",
        "active",
        "planned",
        "staged",
        "failed",
        "inventory",
        "decommissioning",
    ];
    for s in MachineState::ALL {
        assert!(valid.contains(&status_for_state(s)), "{s}");
    }
    assert_eq!(status_for_state(MachineState::Deployed), "active");
    assert_eq!(status_for_state(MachineState::Broken), "failed");
}

#[test]
fn discovered_serial_and_macs_are_written_back_only_where_missing() {
    let mut d = device(1, "n1", &[("eth0", "02:00:00:00:00:01")]);
    d.state_field = Some("new".into());
    // NetBox has eth2 without a MAC; eth1 does not exist there.
    d.interfaces.push(nb_iface(555, 1, "eth2", None));
    let mut m = machine(
        "n1",
        &[
            ("eth0", "02:00:00:00:00:01"),
            ("eth1", "02:00:00:00:00:02"),
            ("eth2", "02:00:00:00:00:03"),
        ],
    );
    m.serial = Some("SN-A".into());
    m.tags = vec!["prod".into()];
    m.bmc = Some(Bmc {
        driver: BmcDriver::Redfish,
        address: "https://10.0.0.1:8443/redfish/v1/Systems/1".into(),
        port: None,
        username: None,
        has_password: false,
        verify_tls: true,
    });
    m.facts = json!({"netbox": placement(&d)});
    let links = HashMap::from([(m.id, 1)]);
    let p = run(&snapshot(vec![d]), &[m], &links);
    assert!(
        p.update.is_empty(),
        "the BMC URL's host is the oob_ip: {:?}",
        p.update
    );
    assert_eq!(p.netbox.devices[0].serial.as_deref(), Some("SN-A"));
    assert_eq!(p.netbox.devices[0].state_field, None);
    assert_eq!(p.netbox.interfaces.len(), 1);
    assert_eq!(p.netbox.interfaces[0].name, "eth1");
    assert_eq!(
        p.netbox.macs,
        vec![MacCreate {
            device_id: 1,
            interface_id: 555,
            mac: mac("02:00:00:00:00:03")
        }]
    );
    assert_eq!(p.unchanged, 0);
}

#[test]
fn serial_mismatch_is_a_conflict_and_nothing_is_overwritten() {
    let mut d = device(1, "n1", &[]);
    d.serial = "SN-NETBOX".into();
    d.state_field = Some("new".into());
    let mut m = machine("n1", &[]);
    m.serial = Some("SN-ANVIL".into());
    let links = HashMap::from([(m.id, 1)]);
    let p = run(&snapshot(vec![d]), &[m], &links);
    assert_eq!(p.conflicts.len(), 1);
    assert_eq!(p.conflicts[0].kind, ConflictKind::SerialMismatch);
    assert!(p.netbox.devices.is_empty());
    assert!(p.update.iter().all(|u| u.serial.is_none()));
}

#[test]
fn netbox_serial_fills_an_empty_anvil_serial() {
    let mut d = device(1, "n1", &[]);
    d.serial = "SN1".into();
    let m = machine("n1", &[]);
    let links = HashMap::from([(m.id, 1)]);
    let p = run(&snapshot(vec![d]), &[m], &links);
    assert_eq!(p.update[0].serial.as_deref(), Some("SN1"));
}

#[test]
fn a_mac_netbox_puts_on_another_device_is_a_conflict_not_a_write() {
    let d1 = device(1, "n1", &[("eth0", "02:00:00:00:00:01")]);
    let d2 = device(2, "n2", &[("eth0", "02:00:00:00:00:02")]);
    // Anvil sees n2's MAC on n1.
    let m1 = machine(
        "n1",
        &[("eth0", "02:00:00:00:00:01"), ("eth1", "02:00:00:00:00:02")],
    );
    let links = HashMap::from([(m1.id, 1)]);
    let p = run(&snapshot(vec![d1, d2]), &[m1], &links);
    assert!(
        p.conflicts
            .iter()
            .any(|c| c.kind == ConflictKind::MacOnOtherDevice)
    );
    assert!(
        p.conflicts
            .iter()
            .any(|c| c.kind == ConflictKind::MacOnOtherMachine && c.device_id == Some(2))
    );
    assert!(p.netbox.interfaces.is_empty());
    // Device 2 is still imported, without the disputed MAC.
    let c = p.create.iter().find(|c| c.device_id == 2).unwrap();
    assert!(c.interfaces.is_empty());
}

#[test]
fn a_mac_on_two_netbox_devices_is_reported_once_and_not_used() {
    let d1 = device(1, "n1", &[("eth0", "02:00:00:00:00:01")]);
    let d2 = device(2, "n2", &[("eth0", "02:00:00:00:00:01")]);
    let p = run(&snapshot(vec![d1, d2]), &[], &HashMap::new());
    let dups: Vec<_> = p
        .conflicts
        .iter()
        .filter(|c| c.kind == ConflictKind::DuplicateMacInNetbox)
        .collect();
    assert_eq!(dups.len(), 1);
    assert!(p.create.iter().all(|c| c.interfaces.is_empty()));
}

#[test]
fn unlinked_machines_are_matched_by_name_then_by_mac() {
    let d1 = device(1, "n1", &[("eth0", "02:00:00:00:00:01")]);
    let d2 = device(2, "n2", &[("eth0", "02:00:00:00:00:02")]);
    let by_name = machine("n1", &[]);
    // Discovered by PXE under a generated name.
    let by_mac = machine("discovered-0202", &[("eth0", "02:00:00:00:00:02")]);
    let p = run(
        &snapshot(vec![d1, d2]),
        &[by_name.clone(), by_mac.clone()],
        &HashMap::new(),
    );
    assert!(p.create.is_empty());
    let u1 = p.update.iter().find(|u| u.device_id == 1).unwrap();
    assert_eq!(u1.machine_id, by_name.id);
    assert!(u1.link);
    assert_eq!(u1.add_interfaces.len(), 1);
    let u2 = p.update.iter().find(|u| u.device_id == 2).unwrap();
    assert_eq!(u2.machine_id, by_mac.id);
    assert_eq!(u2.hostname.as_deref(), Some("n2"), "NetBox owns the name");
}

#[test]
fn netbox_renames_and_retags_linked_machines() {
    let mut d = device(1, "renamed", &[]);
    d.tags = vec!["b".into(), "a".into(), "not valid!".into()];
    let m = machine("old", &[]);
    let links = HashMap::from([(m.id, 1)]);
    let p = run(&snapshot(vec![d]), &[m], &links);
    let u = &p.update[0];
    assert!(!u.link);
    assert_eq!(u.hostname.as_deref(), Some("renamed"));
    assert_eq!(
        u.tags.as_deref(),
        Some(&["a".to_string(), "b".to_string()][..])
    );
    assert!(u.changes.contains(&"hostname".to_string()));
}

#[test]
fn rename_onto_another_machines_hostname_is_a_conflict() {
    let d = device(1, "taken", &[]);
    let m = machine("old", &[]);
    let other = machine("taken", &[]);
    let links = HashMap::from([(m.id, 1), (other.id, 9)]);
    let p = run(
        &NbSnapshot {
            devices: vec![d],
            complete: false,
        },
        &[m, other],
        &links,
    );
    assert!(
        p.conflicts
            .iter()
            .any(|c| c.kind == ConflictKind::HostnameTaken)
    );
    assert!(p.update.iter().all(|u| u.hostname.is_none()));
}

#[test]
fn unnamed_or_invalid_devices_are_reported_not_imported() {
    let mut d = device(1, "has space", &[]);
    let mut unnamed = device(2, "x", &[]);
    unnamed.name = None;
    d.interfaces.clear();
    let p = run(&snapshot(vec![d, unnamed]), &[], &HashMap::new());
    assert!(p.create.is_empty());
    assert_eq!(p.conflicts.len(), 2);
    assert!(
        p.conflicts
            .iter()
            .all(|c| c.kind == ConflictKind::InvalidName)
    );
}

#[test]
fn a_linked_device_missing_from_a_complete_snapshot_is_gone_but_not_from_a_partial_one() {
    let m = machine("n1", &[]);
    let links = HashMap::from([(m.id, 42)]);
    let p = run(&snapshot(vec![]), std::slice::from_ref(&m), &links);
    assert_eq!(p.conflicts[0].kind, ConflictKind::DeviceGone);
    let p = run(
        &NbSnapshot {
            devices: vec![],
            complete: false,
        },
        &[m],
        &links,
    );
    assert!(p.conflicts.is_empty());
}

#[test]
fn interface_with_another_mac_under_the_same_name_is_a_conflict() {
    let mut d = device(1, "n1", &[("eth0", "02:00:00:00:00:01")]);
    d.state_field = Some("new".into());
    let m = machine("n1", &[("eth0", "02:00:00:00:00:09")]);
    let links = HashMap::from([(m.id, 1)]);
    let p = run(&snapshot(vec![d]), &[m], &links);
    assert!(
        p.conflicts
            .iter()
            .any(|c| c.kind == ConflictKind::InterfaceMacMismatch)
    );
    assert!(p.netbox.interfaces.is_empty() && p.netbox.macs.is_empty());
}

#[test]
fn two_new_devices_with_one_name_import_once() {
    let p = run(
        &snapshot(vec![device(1, "n1", &[]), device(2, "N1", &[])]),
        &[],
        &HashMap::new(),
    );
    assert_eq!(p.create.len(), 1);
    assert_eq!(p.conflicts[0].kind, ConflictKind::HostnameTaken);
}

#[test]
fn primary_ip_becomes_the_pxe_interface_address() {
    let mut d = device(1, "n1", &[("eth0", "02:00:00:00:00:01")]);
    d.primary_ip4 = Some("192.0.2.5".into());
    let m = machine("n1", &[("eth0", "02:00:00:00:00:01")]);
    let links = HashMap::from([(m.id, 1)]);
    let p = run(&snapshot(vec![d]), &[m], &links);
    assert_eq!(
        p.update[0].set_ipv4,
        Some((mac("02:00:00:00:00:01"), "192.0.2.5".into()))
    );
}

#[test]
fn bmc_host_extraction() {
    assert_eq!(bmc_host("10.0.0.1"), "10.0.0.1");
    assert_eq!(
        bmc_host("https://10.0.0.1:8443/redfish/v1/Systems/1"),
        "10.0.0.1"
    );
    assert_eq!(bmc_host("bmc.example:623"), "bmc.example");
    assert_eq!(bmc_host("fd00::1"), "fd00::1");
    assert_eq!(bmc_host("https://[fd00::1]:443/"), "fd00::1");
}

#[test]
fn interface_names_are_made_acceptable_to_anvil() {
    assert_eq!(
        anvil_iface_name("GigabitEthernet0/1", 0),
        "GigabitEthernet0-1"
    );
    assert_eq!(anvil_iface_name("", 3), "eth3");
    assert_eq!(anvil_iface_name(&"x".repeat(40), 0).len(), 32);
}
