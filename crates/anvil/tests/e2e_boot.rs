//! End to end: a real machine (QEMU) network-boots from Anvil, runs the
//! discovery ramdisk and calls home; the API then shows the machine, its
//! boot timeline and its lease.
//!
//! Needs root, QEMU, iPXE, OVMF, dnsmasq and busybox (see `e2e::prerequisites`
//! for the Debian packages); `ANVIL_SKIP_VM_TESTS=1` skips these tests. Each
//! VM takes 15-45 s of emulation (TCG). The discovery kernel and initrd are
//! built once by `scripts/boot-assets/build.sh target/boot-assets` (cached).
//!
//! The dnsmasq tests are the baseline Anvil's own DHCP and TFTP are
//! benchmarked against: dnsmasq does DHCP and TFTP, Anvil HTTP boot and
//! call-home. Timings go to stdout and `target/e2e-boot/timings.txt`.

mod common;
mod e2e;

use e2e::{Anvil, DnsmasqRole, Firmware, Lab, Vm};
use serde_json::Value;
use std::time::Duration;

/// Kinds of the recorded boot events of a timeline, in order.
fn event_kinds(tl: &Value) -> Vec<String> {
    tl["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["kind"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// After a VM called home: its machine exists in state `new` with the
/// call-home facts, and its boot timeline is complete with at least
/// `expected` events recorded (in that order). Returns the timeline.
fn assert_discovered(anvil: &Anvil, lab: &Lab, mac: &str, expected: &[&str]) -> Value {
    let m = anvil.wait_for("the machine to exist", Duration::from_secs(10), |a| {
        a.machine_by_mac(mac)
    });
    assert_eq!(m["state"], "new", "{m:#}");
    assert_eq!(m["facts"]["callhome"]["mac"], mac, "{m:#}");
    let ip = m["facts"]["callhome"]["ip"].as_str().unwrap_or("");
    assert!(
        ip.starts_with(&format!("10.77.{}.", lab.n)),
        "call-home IP {ip:?} is not on the boot network: {m:#}"
    );
    let id = m["id"].as_str().unwrap().to_string();
    // Boot events are written in batches: wait for the call-home one.
    let tl = anvil.wait_for("a complete boot timeline", Duration::from_secs(10), |a| {
        let tl = a.timeline(&id);
        (tl["complete"] == true).then_some(tl)
    });
    let kinds = event_kinds(&tl);
    let mut pos = 0;
    for want in expected {
        match kinds[pos..].iter().position(|k| k == want) {
            Some(i) => pos += i + 1,
            None => panic!(
                "boot timeline lacks {want:?} (in order {expected:?}); events: {kinds:?}\n{tl:#}"
            ),
        }
    }
    assert_eq!(tl["stopped_after"], Value::Null, "{tl:#}");
    tl
}

/// The steps of the latest boot that have a time.
fn steps_seen(tl: &Value) -> Vec<String> {
    tl["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| !s["time"].is_null())
                .filter_map(|s| s["kind"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

// --- baseline: dnsmasq does DHCP + TFTP, Anvil HTTP boot + call-home --------

fn dnsmasq_baseline(test: &str, firmware: Firmware) {
    if e2e::prerequisites(firmware == Firmware::UefiPxe).is_none() {
        return;
    }
    let lab = Lab::new();
    // dnsmasq does TFTP here (and Anvil's would want the same port).
    let anvil = Anvil::start(&lab, "[tftp]\nenabled = false\n");
    e2e::start_dnsmasq(
        &lab,
        &lab.ns,
        "br0",
        "dnsmasq",
        // Like Anvil's `[ipv6_ra]`: without a Router Advertisement iPXE
        // waits ~13 s for IPv6 autoconfiguration on every boot.
        DnsmasqRole::BootServer {
            router_advertisements: true,
        },
    );
    let mac = lab.mac(1);
    let vm = Vm::start(&lab, "vm1", firmware, &mac);
    let r = vm.wait_for_callhome(&lab);
    e2e::record_timing(test, "dnsmasq+anvil-http", firmware, &r);

    let tl = assert_discovered(
        &anvil,
        &lab,
        &mac,
        &["http.script", "http.kernel", "http.initrd", "callhome"],
    );
    // dnsmasq gave the address: Anvil has no lease for it, and saw no DHCP.
    assert!(anvil.leases(&mac).is_empty());
    assert!(
        !event_kinds(&tl).iter().any(|k| k.starts_with("dhcp.")),
        "{tl:#}"
    );
    let leases = e2e::read_lossy(&lab.dir.join("dnsmasq.leases"));
    assert!(leases.contains(&mac), "dnsmasq leases: {leases}");
    if firmware == Firmware::UefiPxe {
        let log = lab.log("dnsmasq");
        assert!(log.contains("sent /usr/lib/ipxe/ipxe.efi"), "{log}");
    }
}

#[test]
fn dnsmasq_baseline_bios_ipxe_rom() {
    dnsmasq_baseline("dnsmasq_baseline_bios_ipxe_rom", Firmware::BiosIpxeRom);
}

#[test]
fn dnsmasq_baseline_uefi_pxe_tftp_ipxe_efi() {
    dnsmasq_baseline("dnsmasq_baseline_uefi_pxe_tftp_ipxe_efi", Firmware::UefiPxe);
}

// --- Anvil alone: its DHCP, TFTP and HTTP boot ------------------------------

/// `[tftp]` and `[dhcp]` for Anvil as the boot network's only server.
fn anvil_boot_toml(lab: &Lab, mode: &str) -> String {
    let n = lab.n;
    let server = lab.server_ip();
    let range = if mode == "full" {
        format!(
            "range_start = \"10.77.{n}.100\"\nrange_end = \"10.77.{n}.199\"\nrouter = \"{server}\"\nlease_time_secs = 3600\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"[ipv6_ra]
interfaces = ["br0"]

[tftp]
enabled = true
listen = "{server}:69"
root = "/usr/lib/ipxe"

[dhcp]
enabled = true
interfaces = ["br0"]

[[dhcp.network]]
name = "e2e"
subnet = "10.77.{n}.0/24"
mode = "{mode}"
interface = "br0"
server_address = "{server}"
{range}
[dhcp.network.boot]
http_port = 8080
"#
    )
}

fn anvil_alone(test: &str, firmware: Firmware) {
    if e2e::prerequisites(firmware == Firmware::UefiPxe).is_none() {
        return;
    }
    let lab = Lab::new();
    let anvil = Anvil::start(&lab, &anvil_boot_toml(&lab, "full"));
    let mac = lab.mac(1);
    let vm = Vm::start(&lab, "vm1", firmware, &mac);
    let r = vm.wait_for_callhome(&lab);
    e2e::record_timing(test, "anvil", firmware, &r);

    let mut expected = vec!["dhcp.discover", "dhcp.offer", "dhcp.request", "dhcp.ack"];
    if firmware == Firmware::UefiPxe {
        expected.push("tftp.transfer");
    }
    expected.extend(["http.script", "http.kernel", "http.initrd", "callhome"]);
    let tl = assert_discovered(&anvil, &lab, &mac, &expected);
    eprintln!(
        "{test}: timeline events {:?}; latest boot's steps {:?}",
        event_kinds(&tl),
        steps_seen(&tl)
    );
    let leases = anvil.leases(&mac);
    assert!(!leases.is_empty(), "no lease for {mac}");
    let lease = &leases[0];
    assert_eq!(lease["network"], "e2e", "{lease:#}");
    assert_eq!(lease["state"], "bound", "{lease:#}");
    let m = anvil.machine_by_mac(&mac).unwrap();
    assert_eq!(lease["machine_id"], m["id"], "{lease:#}");
    // The ramdisk's own DHCP got the same address iPXE had.
    assert_eq!(
        lease["address"], m["facts"]["callhome"]["ip"],
        "lease {lease:#} vs call-home {m:#}"
    );
}

#[test]
fn anvil_bios_ipxe_rom_full_dhcp() {
    anvil_alone("anvil_bios_ipxe_rom_full_dhcp", Firmware::BiosIpxeRom);
}

#[test]
fn anvil_uefi_pxe_tftp_ipxe_efi() {
    anvil_alone("anvil_uefi_pxe_tftp_ipxe_efi", Firmware::UefiPxe);
}

/// proxyDHCP: the site's DHCP server (dnsmasq, addresses only, on a host of
/// its own) gives the addresses, Anvil only the boot information, and only
/// to PXE clients.
#[test]
fn anvil_proxy_dhcp_beside_a_plain_dhcp_server() {
    if e2e::prerequisites(false).is_none() {
        return;
    }
    let lab = Lab::new();
    let anvil = Anvil::start(&lab, &anvil_boot_toml(&lab, "proxy"));
    let site = lab.addr(2);
    let dhcp_host = lab.add_host("dhcp", &lab.mac(0xd0), Some(&site));
    e2e::start_dnsmasq(
        &lab,
        &dhcp_host,
        "eth0",
        "site-dhcp",
        DnsmasqRole::AddressesOnly,
    );

    // A plain client (no PXE vendor class): its address from the site's
    // server, and nothing at all from Anvil.
    let plain_mac = lab.mac(0xc1);
    let plain_host = lab.add_host("plain", &plain_mac, None);
    let plain = e2e::udhcpc(&lab, &plain_host, "plain", None, 4);
    assert!(plain.ok, "plain client got no address: {}", plain.output);
    assert_eq!(
        plain.env.get("serverid"),
        Some(&site),
        "plain client: {plain:?}"
    );
    assert!(
        !plain.env.contains_key("boot_file"),
        "a plain client got a boot file: {plain:?}"
    );

    // A client with the PXE vendor class: Anvil offers it a boot file and no
    // address. (busybox udhcpc is no PXE client: it may take that
    // address-less offer and get nowhere, so only Anvil's side is checked.)
    let pxe_mac = lab.mac(0xc2);
    let pxe_host = lab.add_host("pxe", &pxe_mac, None);
    let _ = e2e::udhcpc(
        &lab,
        &pxe_host,
        "pxe",
        Some("PXEClient:Arch:00000:UNDI:002001"),
        2,
    );
    let m = anvil.wait_for(
        "Anvil to discover the PXE client",
        Duration::from_secs(10),
        |a| a.machine_by_mac(&pxe_mac),
    );
    let tl = anvil.timeline(m["id"].as_str().unwrap());
    let offer = tl["events"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["kind"] == "dhcp.offer"))
        .unwrap_or_else(|| panic!("Anvil made the PXE client no offer: {tl:#}"));
    assert_eq!(offer["detail"]["boot"], "undionly.kpxe", "{offer:#}");
    assert_eq!(
        offer["detail"]["ip"],
        Value::Null,
        "a proxy offered an address: {offer:#}"
    );

    // The real thing: a BIOS machine with the iPXE ROM boots through the
    // proxy.
    let mac = lab.mac(1);
    let vm = Vm::start(&lab, "vm1", Firmware::BiosIpxeRom, &mac);
    let r = vm.wait_for_callhome(&lab);
    e2e::record_timing(
        "anvil_proxy_dhcp_beside_a_plain_dhcp_server",
        "dnsmasq-addresses+anvil-proxy",
        Firmware::BiosIpxeRom,
        &r,
    );
    let tl = assert_discovered(
        &anvil,
        &lab,
        &mac,
        &[
            "dhcp.discover",
            "dhcp.offer",
            "http.script",
            "http.kernel",
            "http.initrd",
            "callhome",
        ],
    );
    eprintln!("proxy: timeline events {:?}", event_kinds(&tl));
    let site_leases = e2e::read_lossy(&lab.dir.join("site-dhcp.leases"));
    assert!(
        site_leases.contains(&mac),
        "the site's server did not lease to the VM: {site_leases}"
    );

    // Anvil leased nothing to anyone (proxy mode), and ignored the plain client.
    for m in [&mac, &plain_mac, &pxe_mac] {
        assert!(
            anvil.leases(m).is_empty(),
            "Anvil leased to {m} in proxy mode"
        );
    }
    assert!(
        anvil.machine_by_mac(&plain_mac).is_none(),
        "Anvil discovered the plain (non-PXE) client {plain_mac}"
    );
    let metrics = anvil.metrics();
    let dhcp_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("anvil_dhcp_packets") || l.starts_with("anvil_dhcp_dropped"))
        .collect();
    eprintln!("proxy: Anvil's DHCP metrics:\n{}", dhcp_lines.join("\n"));
    assert!(
        dhcp_lines
            .iter()
            .any(|l| l.contains("reason=\"proxy_not_pxe\"")),
        "no proxy_not_pxe drop counted for the plain client:\n{}",
        dhcp_lines.join("\n")
    );
}
