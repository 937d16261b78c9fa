//! `[dhcp]` as the binary embeds it: defaults, unknown keys, validation
//! messages naming the key.

use anvil_dhcp::{BootFiles, DhcpConfig, NetworkMode};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    dhcp: DhcpConfig,
}

fn parse(toml_text: &str) -> Result<DhcpConfig, String> {
    let f: File = toml::from_str(toml_text).map_err(|e| e.to_string())?;
    f.dhcp.validate().map_err(|e| e.to_string())?;
    Ok(f.dhcp)
}

const NET: &str = r#"
[[dhcp.network]]
name = "rack1"
subnet = "10.0.0.0/24"
interface = "eth1"
range_start = "10.0.0.100"
range_end = "10.0.0.199"
router = "10.0.0.1"
server_address = "10.0.0.2"
"#;

#[test]
fn defaults() {
    let c = parse("").expect("empty file");
    assert!(c.enabled);
    assert!(!c.serves(), "no network, nothing served");
    assert_eq!(c.listen, vec!["0.0.0.0:67".parse().expect("addr")]);
    assert_eq!(c.proxy_listen, "0.0.0.0:4011".parse().expect("addr"));
    assert_eq!(c.offer_hold_secs, 30);
    assert!(c.interfaces.is_empty());

    let c = parse(NET).expect("one network");
    assert!(c.serves());
    let n = &c.networks[0];
    assert_eq!(n.mode, NetworkMode::Full);
    assert!(!n.relay);
    assert_eq!(n.lease_time_secs, 3600);
    assert_eq!(n.boot, BootFiles::default());
    assert_eq!(n.boot.bios, "undionly.kpxe");
    assert_eq!(n.boot.uefi_x64, "ipxe.efi");
    assert_eq!(n.boot.arm64, "ipxe-arm64.efi");
    assert_eq!(n.boot.http_port, 8080);
}

#[test]
fn round_trips_through_toml() {
    // The binary layers defaults with figment's Serialized provider.
    let c = parse(NET).expect("config");
    let text = toml::to_string(&c).expect("serialize");
    let back: DhcpConfig = toml::from_str(&text).expect("deserialize");
    assert_eq!(back, c);
    let text = toml::to_string(&DhcpConfig::default()).expect("serialize default");
    let back: DhcpConfig = toml::from_str(&text).expect("deserialize default");
    assert_eq!(back, DhcpConfig::default());
}

#[test]
fn unknown_keys_are_rejected() {
    let e = parse("[dhcp]\nlisten_on = []\n").expect_err("unknown key");
    assert!(e.contains("listen_on"), "{e}");
    let e = parse(&format!("{NET}gateway = \"10.0.0.1\"\n")).expect_err("unknown key");
    assert!(e.contains("gateway"), "{e}");
    let e = parse(&format!("{NET}[dhcp.network.boot]\nefi = \"x\"\n")).expect_err("unknown");
    assert!(e.contains("efi"), "{e}");
}

fn invalid(extra: &str, replace: (&str, &str), want: &str) {
    let text = format!("{}{extra}", NET.replace(replace.0, replace.1));
    let e = parse(&text).expect_err("invalid config accepted");
    assert!(e.contains(want), "expected {want:?} in: {e}");
}

#[test]
fn validation_names_the_key() {
    invalid(
        "",
        ("range_end = \"10.0.0.199\"", "range_end = \"10.0.1.5\""),
        "range_end",
    );
    invalid(
        "",
        (
            "range_start = \"10.0.0.100\"",
            "range_start = \"10.0.0.250\"",
        ),
        "range_end",
    );
    invalid("", ("range_end = \"10.0.0.199\"", ""), "range_end");
    invalid(
        "",
        (
            "server_address = \"10.0.0.2\"",
            "server_address = \"10.9.0.2\"",
        ),
        "server_address",
    );
    invalid(
        "",
        (
            "server_address = \"10.0.0.2\"",
            "server_address = \"10.0.0.150\"",
        ),
        "server_address",
    );
    invalid(
        "",
        ("router = \"10.0.0.1\"", "router = \"10.0.0.120\""),
        "router",
    );
    invalid(
        "",
        ("subnet = \"10.0.0.0/24\"", "subnet = \"10.0.0.1/24\""),
        "subnet",
    );
    invalid(
        "",
        ("interface = \"eth1\"", "interface = \"eth1\"\nrelay = true"),
        "interface",
    );
    invalid(
        "",
        (
            "interface = \"eth1\"",
            "interface = \"eth1\"\nmode = \"proxy\"",
        ),
        "range_start",
    );
    invalid("mtu = 100\n", ("", ""), "mtu");
    invalid("lease_time_secs = 5\n", ("", ""), "lease_time_secs");
    invalid("domain = \"not a domain\"\n", ("", ""), "domain");
    invalid(
        "[dhcp.network.boot]\nbios = \"../etc/passwd\"\n",
        ("", ""),
        "boot.bios",
    );
    // Overlapping and duplicate networks.
    let second = NET
        .replace("rack1", "rack2")
        .replace("eth1", "eth2")
        .replace("10.0.0.0/24", "10.0.0.128/25")
        .replace("10.0.0.100", "10.0.0.130")
        .replace("10.0.0.1\"", "10.0.0.129\"")
        .replace("10.0.0.2\"", "10.0.0.131\"");
    let e = parse(&format!("{NET}{second}")).expect_err("overlap");
    assert!(e.contains("overlaps"), "{e}");
    let e = parse(&format!(
        "{NET}{}",
        NET.replace("eth1", "eth2").replace("10.0.0.", "10.1.0.")
    ))
    .expect_err("duplicate name");
    assert!(e.contains("duplicate"), "{e}");
    let e = parse(&format!("[dhcp]\nlisten = [\"[::]:547\"]\n{NET}")).expect_err("ipv6");
    assert!(e.contains("dhcp.listen"), "{e}");
    let e = parse(&format!("[dhcp]\ninterfaces = [\"eth9\"]\n{NET}")).expect_err("iface");
    assert!(e.contains("dhcp.interfaces"), "{e}");
}

#[test]
fn a_relay_network_needs_no_local_server_address() {
    let c = parse(
        r#"
        [[dhcp.network]]
        name = "remote"
        subnet = "10.5.0.0/24"
        relay = true
        range_start = "10.5.0.10"
        range_end = "10.5.0.20"
        server_address = "192.0.2.10"
        "#,
    )
    .expect("relay network");
    assert!(c.networks[0].relay);
}
