//! Golden tests over real captured packets (tests/data/*.bin, see
//! tests/data/README.md): classification and the full decision, in full and in
//! proxy mode, compared with tests/data/golden/<name>.txt.
//!
//! `UPDATE_GOLDEN=1 cargo test -p anvil-dhcp --test golden` rewrites the
//! expected files; review the diff before committing it.

mod common;

use anvil_dhcp::{
    Decision, DhcpConfig, DhcpCore, Listener, Outcome, RecvMeta, StaticBootFacts, classify, wire,
};
use common::*;
use dhcproto::v4::{Decodable, Decoder, Message};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::OffsetDateTime;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The network the REQUESTs were captured on (10.77.9.0/24, Anvil at .1),
/// plus a proxy network to replay every packet against proxyDHCP.
fn golden_config() -> DhcpConfig {
    let c: DhcpConfig = toml::from_str(
        r#"
        [[network]]
        name = "capture"
        subnet = "10.77.9.0/24"
        interface = "br0"
        range_start = "10.77.9.100"
        range_end = "10.77.9.200"
        router = "10.77.9.1"
        dns = ["10.77.9.1"]
        domain = "lab.example"
        mtu = 1500
        server_address = "10.77.9.1"

        [[network]]
        name = "site"
        subnet = "10.88.0.0/24"
        mode = "proxy"
        interface = "eth2"
        server_address = "10.88.0.5"
        "#,
    )
    .expect("config");
    c.validate().expect("valid");
    c
}

fn facts() -> StaticBootFacts {
    // The BIOS VM is a known machine with a reservation.
    StaticBootFacts::new().with_host(
        "52:54:00:77:00:01".parse().expect("mac"),
        Some(ip("10.77.9.50")),
        Some("bios-vm"),
    )
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time")
}

fn meta(listener: Listener, interface: &str, local: Ipv4Addr, src: SocketAddrV4) -> RecvMeta {
    RecvMeta {
        listener,
        src,
        local_port: if listener == Listener::Dhcp { 67 } else { 4011 },
        ifindex: Some(3),
        interface: Some(interface.into()),
        local_addr: Some(local),
    }
}

fn render_outcome(out: &mut String, label: &str, o: &Outcome) {
    let received = o.received.map(|k| k.as_str()).unwrap_or("-");
    match &o.decision {
        Decision::Drop(r) => {
            let _ = writeln!(out, "[{label}] received={received} drop={}", r.as_str());
        }
        Decision::NoReply => {
            let _ = writeln!(out, "[{label}] received={received} no-reply");
        }
        Decision::Reply(r) => {
            let _ = writeln!(
                out,
                "[{label}] received={received} reply={} dest={} ifindex={:?} source={:?} durable={} changes={}",
                r.kind.as_str(),
                r.dest,
                r.ifindex,
                r.source,
                o.durable_before_reply,
                o.changes.len()
            );
            let m = decode(&r.bytes);
            let _ = writeln!(
                out,
                "  len={} op={:?} flags={:04x} ciaddr={} yiaddr={} siaddr={} giaddr={} file={:?}",
                r.bytes.len(),
                m.opcode(),
                u16::from(m.flags()),
                m.ciaddr(),
                m.yiaddr(),
                m.siaddr(),
                m.giaddr(),
                file_of(&m).unwrap_or_default()
            );
            for (code, data) in wire::raw_options(&r.bytes) {
                let text = if data.iter().all(|b| (0x20..0x7f).contains(b)) && data.len() > 2 {
                    format!(" {:?}", String::from_utf8_lossy(&data))
                } else {
                    String::new()
                };
                let _ = writeln!(out, "  opt {code:3}: {}{text}", hex(&data));
            }
        }
    }
    for ob in &o.observations {
        let _ = writeln!(
            out,
            "  observe {} ip={:?} known={} boot={:?}",
            ob.kind.as_str(),
            ob.ip,
            ob.known,
            ob.boot
        );
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn render(name: &str, bytes: &[u8]) -> String {
    let mut out = String::new();
    let msg = Message::decode(&mut Decoder::new(bytes)).expect("captured packet decodes");
    let class = classify(&msg);
    let _ = writeln!(out, "packet: {name} ({} bytes)", bytes.len());
    let _ = writeln!(
        out,
        "class: kind={} arch={:?} architecture={:?} firmware={:?}",
        class.kind.as_str(),
        class.arch,
        class.architecture,
        class.firmware
    );
    let _ = writeln!(
        out,
        "  vendor_class={:?} user_class={:?} system_uuid={:?} nii={:?} pxe={} http={}",
        class.vendor_class,
        class.user_class,
        class.system_uuid.map(|u| u.to_string()),
        class.nii,
        class.is_pxe(),
        class.is_http_boot()
    );

    let cfg = golden_config();
    let client = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
    let mut core = DhcpCore::new(&cfg, Arc::new(facts()));
    let o = core.handle(
        bytes,
        &meta(Listener::Dhcp, "br0", ip("10.77.9.1"), client),
        now(),
    );
    render_outcome(&mut out, "full", &o);
    let mut core = DhcpCore::new(&cfg, Arc::new(facts()));
    let o = core.handle(
        bytes,
        &meta(Listener::Dhcp, "eth2", ip("10.88.0.5"), client),
        now(),
    );
    render_outcome(&mut out, "proxy:67", &o);
    let o = core.handle(
        bytes,
        &meta(
            Listener::ProxyPxe,
            "eth2",
            ip("10.88.0.5"),
            SocketAddrV4::new(ip("10.88.0.77"), 68),
        ),
        now(),
    );
    render_outcome(&mut out, "proxy:4011", &o);
    out
}

#[test]
fn captured_packets_match_golden_outputs() {
    let dir = data_dir();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/data")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bin"))
        .collect();
    names.sort();
    assert!(names.len() >= 7, "captured packets missing: {names:?}");
    let mut failures = Vec::new();
    for name in &names {
        let bytes = std::fs::read(dir.join(name)).expect("read packet");
        let got = render(name, &bytes);
        let golden = dir.join("golden").join(name.replace(".bin", ".txt"));
        if update {
            std::fs::create_dir_all(golden.parent().expect("dir")).expect("mkdir");
            std::fs::write(&golden, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if want != got {
            failures.push(format!(
                "{name}: differs from {}\n--- expected\n{want}\n--- got\n{got}",
                golden.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(UPDATE_GOLDEN=1 rewrites the expected files)",
        failures.join("\n")
    );
}

/// The classification every captured client must get, independent of the
/// golden files (so a careless UPDATE_GOLDEN cannot bless a regression).
#[test]
fn captured_clients_are_classified() {
    let want = [
        ("bios-ipxe-rom-discover.bin", "ipxe", Some(0)),
        ("uefi-pxe-discover.bin", "pxe_uefi_x64", Some(7)),
        ("uefi-http-discover.bin", "http_uefi_x64", Some(16)),
        ("uefi-ipxe-rom-discover.bin", "ipxe", Some(7)),
        ("udhcpc-discover.bin", "non_pxe", None),
        ("dhclient-discover.bin", "non_pxe", None),
    ];
    for (name, kind, arch) in want {
        let bytes = std::fs::read(data_dir().join(name)).expect(name);
        let m = Message::decode(&mut Decoder::new(&bytes)).expect("decode");
        let c = classify(&m);
        assert_eq!(c.kind.as_str(), kind, "{name}");
        assert_eq!(c.arch, arch, "{name}");
        if kind != "non_pxe" {
            assert_eq!(
                c.system_uuid.map(|u| u.to_string()).as_deref(),
                Some("4c4c4544-0042-3510-8052-b4c04f4d4e31"),
                "{name}: option 97 is QEMU's -uuid"
            );
        }
    }
}
