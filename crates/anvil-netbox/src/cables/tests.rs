use super::*;

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn uuid(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// An LLDP neighbour the way a switch running lldpd or EOS announces it.
fn lldp(iface: &str, system: &str, port: &str) -> Neighbour {
    Neighbour {
        interface: iface.into(),
        chassis_id: "02:5e:00:00:00:01".into(),
        chassis_id_subtype: "mac_address".into(),
        port_id: port.into(),
        port_id_subtype: "interface_name".into(),
        port_description: None,
        system_name: Some(system.into()),
    }
}

fn machine(
    n: u128,
    device: u64,
    nics: &[(&str, &str)],
    neighbours: Vec<Neighbour>,
) -> MachineNeighbours {
    MachineNeighbours {
        machine_id: uuid(n),
        hostname: format!("node-{n}"),
        device_id: device,
        nics: nics
            .iter()
            .map(|(name, m)| (name.to_string(), vec![mac(m)]))
            .collect(),
        neighbours,
    }
}

fn iface(id: u64, device: u64, name: &str, m: Option<&str>) -> CableInterface {
    CableInterface {
        id,
        device_id: device,
        name: name.into(),
        macs: m.map(|m| vec![mac(m)]).unwrap_or_default(),
        cable: None,
        link_peers: vec![],
        connected_endpoints: vec![],
    }
}

fn cabled(mut i: CableInterface, cable: u64, peer: u64, label: &str) -> CableInterface {
    i.cable = Some(cable);
    let p = Peer {
        object_type: "dcim.interface".into(),
        id: peer,
        label: label.into(),
    };
    i.link_peers = vec![p.clone()];
    i.connected_endpoints = vec![p];
    i
}

fn dev(id: u64, name: &str) -> NamedDevice {
    NamedDevice {
        id,
        name: name.into(),
    }
}

const M0: &str = "02:00:00:00:00:01";
const M1: &str = "02:00:00:00:00:02";

/// Machine device 1 (eth0 = 11, eth1 = 12), switch device 5 "leaf-1"
/// (Ethernet1 = 51, Ethernet2 = 52).
fn world() -> (Vec<NamedDevice>, Vec<CableInterface>) {
    (
        vec![dev(5, "leaf-1")],
        vec![
            iface(11, 1, "eth0", Some(M0)),
            iface(12, 1, "eth1", Some(M1)),
            iface(51, 5, "Ethernet1", None),
            iface(52, 5, "Ethernet2", None),
        ],
    )
}

fn run(
    machines: &[MachineNeighbours],
    named: &[NamedDevice],
    ifaces: &[CableInterface],
) -> CablePlan {
    plan_cables(&CableInput {
        machines,
        named,
        by_mac: &[],
        interfaces: ifaces,
    })
}

#[test]
fn a_neighbour_on_two_free_interfaces_becomes_a_cable() {
    let (named, ifaces) = world();
    let m = machine(
        1,
        1,
        &[("enp1s0f0", M0)],
        vec![lldp("enp1s0f0", "leaf-1", "Ethernet1")],
    );
    let p = run(&[m], &named, &ifaces);
    assert_eq!(p.conflicts, vec![]);
    assert_eq!(
        p.create,
        vec![CableCreate {
            machine_id: uuid(1),
            device_id: 1,
            interface_id: 11,
            interface: "eth0".into(),
            peer_device_id: 5,
            peer_device: "leaf-1".into(),
            peer_interface_id: 51,
            peer_interface: "Ethernet1".into(),
        }]
    );
    assert_eq!(
        p.create[0].to_json(),
        json!({
            "a_terminations": [{"object_type": "dcim.interface", "object_id": 11}],
            "b_terminations": [{"object_type": "dcim.interface", "object_id": 51}],
            "status": "connected",
            "description": "LLDP, written by Anvil",
        })
    );
}

#[test]
fn the_short_host_name_and_case_find_the_switch() {
    let (_, ifaces) = world();
    let named = vec![dev(5, "Leaf-1")];
    let m = machine(
        1,
        1,
        &[("eth0", M0)],
        vec![lldp("eth0", "leaf-1.dc1.example.net", "ethernet1")],
    );
    let p = run(&[m], &named, &ifaces);
    assert_eq!(p.conflicts, vec![]);
    assert_eq!(p.create.len(), 1);
    assert_eq!(p.create[0].peer_interface_id, 51);
    // The full name wins over the short one when NetBox has both.
    let named = vec![dev(5, "leaf-1"), dev(6, "leaf-1.dc1.example.net")];
    let mut ifaces = ifaces;
    ifaces.push(iface(61, 6, "Ethernet1", None));
    let m = machine(
        1,
        1,
        &[("eth0", M0)],
        vec![lldp("eth0", "leaf-1.dc1.example.net", "Ethernet1")],
    );
    let p = run(&[m], &named, &ifaces);
    assert_eq!(p.create[0].peer_interface_id, 61);
    assert_eq!(
        names_to_find(&[machine(
            1,
            1,
            &[],
            vec![lldp("eth0", "leaf-1.dc1.example.net", "x")]
        )]),
        vec!["leaf-1".to_string(), "leaf-1.dc1.example.net".to_string()]
    );
}

#[test]
fn the_port_description_serves_when_the_port_id_is_not_a_name() {
    let (named, ifaces) = world();
    // lldpd's default: port ID = the port's MAC, description = its name.
    let mut n = lldp("eth0", "leaf-1", "02:5e:00:00:01:02");
    n.port_id_subtype = "mac_address".into();
    n.port_description = Some("Ethernet2".into());
    let p = run(&[machine(1, 1, &[("eth0", M0)], vec![n])], &named, &ifaces);
    assert_eq!(p.create[0].peer_interface_id, 52, "{p:?}");
    // A `local` port ID (an ifIndex) is not a name.
    let mut n = lldp("eth0", "leaf-1", "Ethernet1");
    n.port_id_subtype = "local".into();
    let p = run(&[machine(1, 1, &[("eth0", M0)], vec![n])], &named, &ifaces);
    assert_eq!(p.create, vec![]);
    assert_eq!(p.conflicts[0].kind, ConflictKind::LldpUnknownPort);
}

#[test]
fn a_port_id_mac_finds_the_switch_interface_holding_it() {
    let (named, mut ifaces) = world();
    ifaces[3].macs = vec![mac("02:5e:00:00:01:02")];
    let mut n = lldp("eth0", "leaf-1", "02:5e:00:00:01:02");
    n.port_id_subtype = "mac_address".into();
    let p = run(&[machine(1, 1, &[("eth0", M0)], vec![n])], &named, &ifaces);
    assert_eq!(p.create[0].peer_interface_id, 52);
}

#[test]
fn the_chassis_mac_finds_a_switch_without_a_system_name() {
    let (_, ifaces) = world();
    let mut n = lldp("eth0", "", "Ethernet1");
    n.system_name = None;
    let machines = [machine(1, 1, &[("eth0", M0)], vec![n])];
    assert_eq!(macs_to_find(&machines, &[]), vec![mac("02:5e:00:00:00:01")]);
    let by_mac = [(mac("02:5e:00:00:00:01"), dev(5, "leaf-1"))];
    let p = plan_cables(&CableInput {
        machines: &machines,
        named: &[],
        by_mac: &by_mac,
        interfaces: &ifaces,
    });
    assert_eq!(p.create[0].peer_interface_id, 51, "{p:?}");
    // A system name NetBox has needs no MAC lookup.
    let machines = [machine(
        1,
        1,
        &[("eth0", M0)],
        vec![lldp("eth0", "leaf-1", "Ethernet1")],
    )];
    assert_eq!(macs_to_find(&machines, &[dev(5, "leaf-1")]), vec![]);
}

#[test]
fn the_same_cable_already_in_netbox_is_unchanged() {
    let (named, mut ifaces) = world();
    ifaces[0] = cabled(ifaces[0].clone(), 9, 51, "leaf-1 Ethernet1");
    ifaces[2] = cabled(ifaces[2].clone(), 9, 11, "node-1 eth0");
    let m = machine(
        1,
        1,
        &[("eth0", M0)],
        vec![lldp("eth0", "leaf-1", "Ethernet1")],
    );
    let p = run(&[m], &named, &ifaces);
    assert_eq!((p.create.len(), p.unchanged, p.conflicts.len()), (0, 1, 0));
}

#[test]
fn a_path_through_a_patch_panel_to_the_same_port_is_unchanged() {
    let (named, mut ifaces) = world();
    ifaces[0].cable = Some(9);
    ifaces[0].link_peers = vec![Peer {
        object_type: "dcim.frontport".into(),
        id: 300,
        label: "pp-1 1".into(),
    }];
    ifaces[0].connected_endpoints = vec![Peer {
        object_type: "dcim.interface".into(),
        id: 51,
        label: "leaf-1 Ethernet1".into(),
    }];
    let m = machine(
        1,
        1,
        &[("eth0", M0)],
        vec![lldp("eth0", "leaf-1", "Ethernet1")],
    );
    let p = run(&[m], &named, &ifaces);
    assert_eq!((p.create.len(), p.unchanged, p.conflicts.len()), (0, 1, 0));
}

#[test]
fn existing_cables_elsewhere_are_conflicts_never_rewritten() {
    let (named, mut ifaces) = world();
    // The machine's eth0 goes to leaf-1 Ethernet2 in NetBox; LLDP says Ethernet1.
    ifaces[0] = cabled(ifaces[0].clone(), 9, 52, "leaf-1 Ethernet2");
    ifaces[3] = cabled(ifaces[3].clone(), 9, 11, "node-1 eth0");
    // The machine's eth1 is free, but the port it hears (Ethernet2) is taken.
    let m = machine(
        1,
        1,
        &[("eth0", M0), ("eth1", M1)],
        vec![
            lldp("eth0", "leaf-1", "Ethernet1"),
            lldp("eth1", "leaf-1", "Ethernet2"),
        ],
    );
    let p = run(&[m], &named, &ifaces);
    assert_eq!(p.create, vec![]);
    let kinds: Vec<ConflictKind> = p.conflicts.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        vec![
            ConflictKind::CableOnMachineInterface,
            ConflictKind::CableOnSwitchInterface
        ]
    );
    assert!(
        p.conflicts[0].message.contains("leaf-1 Ethernet2"),
        "{:?}",
        p.conflicts
    );
    assert!(
        p.conflicts[1].message.contains("node-1 eth0"),
        "{:?}",
        p.conflicts
    );
    assert_eq!(p.conflicts[0].machine_id, Some(uuid(1)));
    assert_eq!(p.conflicts[0].device_id, Some(1));
}

#[test]
fn unknown_switches_and_ports_are_conflicts() {
    let (named, ifaces) = world();
    let m = machine(
        1,
        1,
        &[("eth0", M0), ("eth1", M1)],
        vec![
            lldp("eth0", "spine-9", "Ethernet1"),
            lldp("eth1", "leaf-1", "Ethernet48"),
        ],
    );
    let p = run(&[m], &named, &ifaces);
    assert_eq!(p.create, vec![]);
    assert_eq!(p.conflicts.len(), 2);
    assert_eq!(p.conflicts[0].kind, ConflictKind::LldpUnknownDevice);
    assert!(
        p.conflicts[0].message.contains("spine-9"),
        "{}",
        p.conflicts[0].message
    );
    assert_eq!(p.conflicts[1].kind, ConflictKind::LldpUnknownPort);
    assert!(p.conflicts[1].message.contains("Ethernet48"));
}

#[test]
fn ambiguity_is_reported_not_guessed() {
    let (_, mut ifaces) = world();
    // Two devices named leaf-1 (two sites), no chassis MAC to choose.
    let named = vec![dev(5, "leaf-1"), dev(6, "leaf-1")];
    ifaces.push(iface(61, 6, "Ethernet1", None));
    let mut n = lldp("eth0", "leaf-1", "Ethernet1");
    n.chassis_id_subtype = "local".into();
    let p = run(&[machine(1, 1, &[("eth0", M0)], vec![n])], &named, &ifaces);
    assert_eq!(p.conflicts[0].kind, ConflictKind::LldpAmbiguous);
    assert_eq!(p.create, vec![]);
    // The chassis MAC tells them apart (and is looked up for that).
    let by_mac = [(mac("02:5e:00:00:00:01"), dev(6, "leaf-1"))];
    let machines = [machine(
        1,
        1,
        &[("eth0", M0)],
        vec![lldp("eth0", "leaf-1", "Ethernet1")],
    )];
    let p = plan_cables(&CableInput {
        machines: &machines,
        named: &named,
        by_mac: &by_mac,
        interfaces: &ifaces,
    });
    assert_eq!(p.create[0].peer_interface_id, 61, "{p:?}");
    assert_eq!(
        macs_to_find(&machines, &named),
        vec![mac("02:5e:00:00:00:01")]
    );

    // One NIC hearing two different switches.
    let (named, ifaces) = world();
    let m = machine(
        1,
        1,
        &[("eth0", M0)],
        vec![
            lldp("eth0", "leaf-1", "Ethernet1"),
            lldp("eth0", "leaf-1", "Ethernet2"),
        ],
    );
    let p = run(&[m], &named, &ifaces);
    assert_eq!(p.create, vec![]);
    assert_eq!(p.conflicts[0].kind, ConflictKind::LldpAmbiguous);

    // Two machines' NICs naming one switch port: the first gets the cable.
    let mut ifaces = ifaces;
    ifaces.push(iface(21, 2, "eth0", Some("02:00:00:00:02:01")));
    let a = machine(
        1,
        1,
        &[("eth0", M0)],
        vec![lldp("eth0", "leaf-1", "Ethernet1")],
    );
    let b = machine(
        2,
        2,
        &[("eth0", "02:00:00:00:02:01")],
        vec![lldp("eth0", "leaf-1", "Ethernet1")],
    );
    let p = run(&[b, a], &named, &ifaces);
    assert_eq!(p.create.len(), 1);
    assert_eq!(p.create[0].interface_id, 11);
    assert_eq!(p.conflicts.len(), 1);
    assert_eq!(p.conflicts[0].machine_id, Some(uuid(2)));
}

#[test]
fn two_machines_hearing_each_other_get_one_cable() {
    let ifaces = vec![
        iface(11, 1, "eth0", Some(M0)),
        iface(21, 2, "eth0", Some(M1)),
    ];
    let named = vec![dev(1, "node-1"), dev(2, "node-2")];
    let a = machine(1, 1, &[("eth0", M0)], vec![lldp("eth0", "node-2", "eth0")]);
    let b = machine(2, 2, &[("eth0", M1)], vec![lldp("eth0", "node-1", "eth0")]);
    let p = run(&[a, b], &named, &ifaces);
    assert_eq!(p.conflicts, vec![]);
    assert_eq!(p.create.len(), 1);
}

#[test]
fn a_machine_interface_netbox_lacks_is_skipped_until_the_sync_creates_it() {
    let (named, ifaces) = world();
    let m = machine(
        1,
        1,
        &[("eth7", "02:00:00:00:00:77")],
        vec![lldp("eth7", "leaf-1", "Ethernet1")],
    );
    let p = run(&[m], &named, &ifaces);
    assert_eq!((p.create.len(), p.conflicts.len()), (0, 0));
    assert_eq!(p.skipped.len(), 1);
    assert_eq!(p.skipped[0].interface, "eth7");
    // Found by name when the facts have no NIC entry for it.
    let m = machine(1, 1, &[], vec![lldp("eth1", "leaf-1", "Ethernet1")]);
    let p = run(&[m], &named, &ifaces);
    assert_eq!(p.create[0].interface_id, 12);
}

#[test]
fn decodes_netbox_interfaces_with_cables() {
    let v = json!({
        "id": 1, "name": "Ethernet1",
        "device": {"id": 1, "name": "Leaf-1"},
        "mac_addresses": [{"id": 1, "mac_address": "02:00:00:00:AA:01"}],
        "cable": {"id": 1, "label": ""},
        "link_peers": [{"id": 2, "name": "eth0", "device": {"id": 2, "name": "srv"}}],
        "link_peers_type": "dcim.interface",
        "connected_endpoints": null,
        "connected_endpoints_type": null
    });
    let i = cable_interface_from_json(&v).unwrap();
    assert_eq!(i.device_id, 1);
    assert_eq!(i.macs, vec![mac("02:00:00:00:aa:01")]);
    assert_eq!(i.cable, Some(1));
    assert_eq!(
        i.link_peers,
        vec![Peer {
            object_type: "dcim.interface".into(),
            id: 2,
            label: "srv eth0".into()
        }]
    );
    assert_eq!(i.connected_endpoints, vec![]);
    let free = json!({"id": 3, "name": "x", "device": 4, "cable": null, "link_peers": []});
    assert_eq!(cable_interface_from_json(&free).unwrap().cable, None);
    assert!(cable_interface_from_json(&json!({"id": 3})).is_err());
    assert!(named_device_from_json(&json!({"name": "x"})).is_err());
}
