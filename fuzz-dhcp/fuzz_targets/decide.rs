//! Packet decode + the core's whole decision path, on arbitrary bytes.
//! The first byte picks how the packet arrived (direct full-mode network,
//! relay, proxy on 67, proxy on 4011); the core keeps its lease table across
//! inputs, so sequences of packets explore lease state too. Every reply must
//! decode and respect the size limit.
#![no_main]

use anvil_dhcp::{Decision, DhcpConfig, DhcpCore, Listener, RecvMeta, StaticBootFacts};
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex, OnceLock};
use time::OffsetDateTime;

const CONFIG: &str = r#"
[[network]]
name = "lab"
subnet = "10.0.0.0/24"
interface = "eth1"
range_start = "10.0.0.100"
range_end = "10.0.0.103"
router = "10.0.0.1"
dns = ["10.0.0.2"]
domain = "lab.example"
server_address = "10.0.0.2"

[[network]]
name = "rack"
subnet = "10.2.0.0/24"
relay = true
range_start = "10.2.0.10"
range_end = "10.2.0.20"
server_address = "192.0.2.10"

[[network]]
name = "site"
subnet = "10.9.0.0/24"
mode = "proxy"
interface = "eth2"
server_address = "10.9.0.5"
"#;

fn core() -> &'static Mutex<(DhcpCore, i64)> {
    static CORE: OnceLock<Mutex<(DhcpCore, i64)>> = OnceLock::new();
    CORE.get_or_init(|| {
        let cfg: DhcpConfig = toml::from_str(CONFIG).expect("config");
        cfg.validate().expect("valid");
        let facts = StaticBootFacts::new().with_host(
            anvil_types::MacAddr([0x52, 0x54, 0, 0, 0, 1]),
            Some(Ipv4Addr::new(10, 0, 0, 50)),
            Some("node-1"),
        );
        Mutex::new((DhcpCore::new(&cfg, Arc::new(facts)), 1_800_000_000))
    })
}

fn meta(sel: u8) -> RecvMeta {
    let (listener, iface, local, port) = match sel % 4 {
        0 => (Listener::Dhcp, "eth1", Ipv4Addr::new(10, 0, 0, 2), 67),
        1 => (Listener::Dhcp, "uplink", Ipv4Addr::new(192, 0, 2, 10), 67),
        2 => (Listener::Dhcp, "eth2", Ipv4Addr::new(10, 9, 0, 5), 67),
        _ => (Listener::ProxyPxe, "eth2", Ipv4Addr::new(10, 9, 0, 5), 4011),
    };
    RecvMeta {
        listener,
        src: SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 77), 68),
        local_port: port,
        ifindex: Some(3),
        interface: Some(iface.into()),
        local_addr: Some(local),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, packet)) = data.split_first() else {
        return;
    };
    let mut g = core().lock().unwrap_or_else(|e| e.into_inner());
    let (core, clock) = &mut *g;
    // Time moves forward a little with every input, a lot now and then, so
    // holds, leases and quarantines expire.
    *clock += i64::from(sel >> 4) * if sel & 8 != 0 { 900 } else { 1 };
    let now = OffsetDateTime::from_unix_timestamp(*clock).expect("time");
    let out = core.handle(packet, &meta(sel), now);
    if let Decision::Reply(r) = &out.decision {
        assert!(r.bytes.len() <= 1472, "reply of {} bytes", r.bytes.len());
        assert!(r.bytes.len() >= 300);
        assert_eq!(r.bytes[0], 2, "replies are BOOTREPLY");
        let _ = anvil_dhcp::wire::raw_options(&r.bytes);
    }
    if out.durable_before_reply {
        assert!(!out.changes.is_empty(), "an ACK without a lease change");
    }
    if sel & 0x0f == 0x0f {
        let _ = core.sweep(now);
    }
});
