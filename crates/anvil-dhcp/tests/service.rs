//! The service over real sockets on loopback: a relay-style client (giaddr
//! set, unicast), group commit, the per-message timeout, and "no network, no
//! socket". Needs no root.

mod common;

use anvil_dhcp::{
    CollectingObserver, DhcpConfig, DhcpMessageKind, LeaseState, MemoryLeaseStore, StaticBootFacts,
};
use common::*;
use dhcproto::v4::{DhcpOption, Message, MessageType};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A relay network 127.77.<n>.0/24 reached through the relay 127.77.<n>.1;
/// the server listens on 127.0.0.1:<port>.
fn relay_config(port: u16, n: u8) -> DhcpConfig {
    let toml = format!(
        r#"
        listen = ["127.0.0.1:{port}"]
        commit_delay_max_ms = 20
        reply_timeout_ms = 800
        [[network]]
        name = "rack"
        subnet = "127.77.{n}.0/24"
        relay = true
        range_start = "127.77.{n}.10"
        range_end = "127.77.{n}.250"
        router = "127.77.{n}.1"
        dns = ["127.0.0.53"]
        server_address = "127.0.0.1"
        "#
    );
    let c: DhcpConfig = toml::from_str(&toml).expect("config");
    c.validate().expect("valid");
    c
}

/// A relay agent: listens on giaddr:<port>, forwards to the server.
struct Relay {
    sock: UdpSocket,
    giaddr: Ipv4Addr,
    server: SocketAddr,
}

impl Relay {
    fn new(giaddr: Ipv4Addr, port: u16) -> Relay {
        let sock = UdpSocket::bind((giaddr, port)).expect("bind relay");
        sock.set_read_timeout(Some(Duration::from_millis(1500)))
            .expect("timeout");
        Relay {
            sock,
            giaddr,
            server: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
    fn send(&self, p: Pkt) {
        let mut p = p.giaddr(self.giaddr);
        p.msg.set_hops(1);
        self.sock.send_to(&p.bytes(), self.server).expect("send");
    }
    fn recv(&self) -> Option<(Message, Vec<u8>, SocketAddr)> {
        let mut buf = [0u8; 1500];
        let (n, from) = self.sock.recv_from(&mut buf).ok()?;
        Some((decode(&buf[..n]), buf[..n].to_vec(), from))
    }
}

#[test]
fn relayed_dora_over_loopback() {
    let port = free_udp_port();
    let store = Arc::new(MemoryLeaseStore::new());
    let obs = Arc::new(CollectingObserver::new());
    let server = Server::start(
        None,
        relay_config(port, 1),
        store.clone(),
        Arc::new(StaticBootFacts::new()),
        obs.clone(),
    );
    let relay = Relay::new(Ipv4Addr::new(127, 77, 1, 1), port);
    let m = mac(0x77);
    relay.send(Pkt::new(MessageType::Discover, m).prl(&[1, 3, 6]));
    let (offer, _, from) = relay.recv().expect("an OFFER to the relay");
    assert_eq!(from, SocketAddr::from(([127, 0, 0, 1], port)));
    assert_eq!(msg_type(&offer), MessageType::Offer);
    assert_eq!(offer.giaddr(), Ipv4Addr::new(127, 77, 1, 1));
    let a = offer.yiaddr();
    assert_eq!(a, Ipv4Addr::new(127, 77, 1, 10));
    relay.send(
        Pkt::new(MessageType::Request, m)
            .requested(a)
            .server_id(Ipv4Addr::LOCALHOST),
    );
    let (ack, bytes, _) = relay.recv().expect("an ACK to the relay");
    assert_eq!(msg_type(&ack), MessageType::Ack);
    assert_eq!(opt_bytes(&bytes, 3), Some(vec![127, 77, 1, 1]));
    // The ACK was sent after its lease was durable.
    let l = store
        .get("rack", a)
        .expect("lease committed before the ACK");
    assert_eq!(l.state, LeaseState::Bound);
    assert_eq!(l.mac, m);

    relay.send(
        Pkt::new(MessageType::Release, m)
            .ciaddr(a)
            .server_id(Ipv4Addr::LOCALHOST),
    );
    // The release is committed with the next batch.
    let deadline = Instant::now() + Duration::from_secs(3);
    while store.get("rack", a).map(|l| l.state) != Some(LeaseState::Released) {
        assert!(Instant::now() < deadline, "release not committed");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.stop().expect("clean stop");
    let kinds: Vec<DhcpMessageKind> = obs.events().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            DhcpMessageKind::Discover,
            DhcpMessageKind::Offer,
            DhcpMessageKind::Request,
            DhcpMessageKind::Ack,
            DhcpMessageKind::Release
        ]
    );
    assert!(
        obs.events()
            .iter()
            .all(|e| e.relay == Some(Ipv4Addr::new(127, 77, 1, 1)))
    );
}

#[test]
fn many_acks_share_a_commit() {
    let port = free_udp_port();
    let store = Arc::new(MemoryLeaseStore::new());
    // Each commit takes 50 ms, like an fsync on a busy disk.
    store.set_delay(Duration::from_millis(50));
    let mut cfg = relay_config(port, 2);
    cfg.reply_timeout_ms = 5000;
    let server = Server::start(
        None,
        cfg,
        store.clone(),
        Arc::new(StaticBootFacts::new()),
        Arc::new(CollectingObserver::new()),
    );
    let relay = Relay::new(Ipv4Addr::new(127, 77, 2, 1), port);
    const N: u32 = 60;
    for i in 0..N {
        relay.send(Pkt::new(MessageType::Discover, mac(0x100 + i)));
    }
    let mut offers = Vec::new();
    while offers.len() < N as usize {
        let (m, _, _) = relay.recv().expect("offer");
        offers.push((m.chaddr().to_vec(), m.yiaddr()));
    }
    let distinct: std::collections::HashSet<_> = offers.iter().map(|o| o.1).collect();
    assert_eq!(
        distinct.len(),
        N as usize,
        "sequential MACs got distinct offers"
    );
    for (ch, a) in &offers {
        let m = anvil_types::MacAddr(ch[..6].try_into().expect("mac"));
        relay.send(
            Pkt::new(MessageType::Request, m)
                .requested(*a)
                .server_id(Ipv4Addr::LOCALHOST),
        );
    }
    let mut acks = 0;
    while acks < N {
        let (m, _, _) = relay.recv().expect("ack");
        assert_eq!(msg_type(&m), MessageType::Ack);
        acks += 1;
    }
    server.stop().expect("stop");
    let batches = store.batches();
    assert_eq!(batches.iter().sum::<usize>(), N as usize);
    assert!(
        batches.len() < (N as usize) / 3,
        "{} commits for {N} ACKs: {batches:?}",
        batches.len()
    );
}

#[test]
fn a_slow_store_costs_acks_not_the_service() {
    let port = free_udp_port();
    let store = Arc::new(MemoryLeaseStore::new());
    store.set_delay(Duration::from_secs(3));
    let server = Server::start(
        None,
        relay_config(port, 3),
        store.clone(),
        Arc::new(StaticBootFacts::new()),
        Arc::new(CollectingObserver::new()),
    );
    let relay = Relay::new(Ipv4Addr::new(127, 77, 3, 1), port);
    relay.send(Pkt::new(MessageType::Discover, mac(1)));
    let (offer, _, _) = relay.recv().expect("offer");
    relay.send(
        Pkt::new(MessageType::Request, mac(1))
            .requested(offer.yiaddr())
            .server_id(Ipv4Addr::LOCALHOST),
    );
    // The commit outlives the 800 ms reply deadline: no ACK...
    assert!(relay.recv().is_none(), "a late ACK was sent");
    // ...but the service still answers while the store hangs.
    relay.send(Pkt::new(MessageType::Discover, mac(2)));
    let (offer2, _, _) = relay.recv().expect("offer while the store is stuck");
    assert_eq!(msg_type(&offer2), MessageType::Offer);
    assert_ne!(offer2.yiaddr(), offer.yiaddr());
    // Once the store is healthy again the retransmitted REQUEST is ACKed.
    store.set_delay(Duration::ZERO);
    std::thread::sleep(Duration::from_millis(300));
    relay.send(
        Pkt::new(MessageType::Request, mac(1))
            .requested(offer.yiaddr())
            .server_id(Ipv4Addr::LOCALHOST),
    );
    let (ack, _, _) = relay.recv().expect("ack after recovery");
    assert_eq!(msg_type(&ack), MessageType::Ack);
    server.stop().expect("stop");
}

#[test]
fn a_failing_store_withholds_acks() {
    let port = free_udp_port();
    let store = Arc::new(MemoryLeaseStore::new());
    store.set_fail(true);
    let server = Server::start(
        None,
        relay_config(port, 4),
        store.clone(),
        Arc::new(StaticBootFacts::new()),
        Arc::new(CollectingObserver::new()),
    );
    let relay = Relay::new(Ipv4Addr::new(127, 77, 4, 1), port);
    relay.send(Pkt::new(MessageType::Discover, mac(1)));
    let (offer, _, _) = relay.recv().expect("offer");
    let req = || {
        Pkt::new(MessageType::Request, mac(1))
            .requested(offer.yiaddr())
            .server_id(Ipv4Addr::LOCALHOST)
    };
    relay.send(req());
    assert!(relay.recv().is_none(), "ACK sent without a durable lease");
    store.set_fail(false);
    relay.send(req());
    assert_eq!(msg_type(&relay.recv().expect("ack").0), MessageType::Ack);
    assert_eq!(
        store.get("rack", offer.yiaddr()).map(|l| l.state),
        Some(LeaseState::Bound)
    );
    server.stop().expect("stop");
}

#[test]
fn leases_survive_a_restart() {
    let port = free_udp_port();
    let store = Arc::new(MemoryLeaseStore::new());
    let server = Server::start(
        None,
        relay_config(port, 5),
        store.clone(),
        Arc::new(StaticBootFacts::new()),
        Arc::new(CollectingObserver::new()),
    );
    let relay = Relay::new(Ipv4Addr::new(127, 77, 5, 1), port);
    relay.send(Pkt::new(MessageType::Discover, mac(1)));
    let (offer, _, _) = relay.recv().expect("offer");
    relay.send(
        Pkt::new(MessageType::Request, mac(1))
            .requested(offer.yiaddr())
            .server_id(Ipv4Addr::LOCALHOST),
    );
    relay.recv().expect("ack");
    server.stop().expect("stop");
    drop(relay);

    let server = Server::start(
        None,
        relay_config(port, 5),
        store.clone(),
        Arc::new(StaticBootFacts::new()),
        Arc::new(CollectingObserver::new()),
    );
    let relay = Relay::new(Ipv4Addr::new(127, 77, 5, 1), port);
    // Another client does not get the bound address; the owner does.
    relay.send(Pkt::new(MessageType::Discover, mac(2)));
    assert_ne!(relay.recv().expect("offer").0.yiaddr(), offer.yiaddr());
    relay.send(Pkt::new(MessageType::Discover, mac(1)));
    assert_eq!(relay.recv().expect("offer").0.yiaddr(), offer.yiaddr());
    server.stop().expect("stop");
}

#[test]
fn no_network_no_socket() {
    let port = free_udp_port();
    let cfg: DhcpConfig =
        toml::from_str(&format!("listen = [\"127.0.0.1:{port}\"]")).expect("config");
    let server = Server::start(
        None,
        cfg,
        Arc::new(MemoryLeaseStore::new()),
        Arc::new(StaticBootFacts::new()),
        Arc::new(CollectingObserver::new()),
    );
    assert!(server.is_running(), "run() waits for shutdown");
    // Nobody holds the port: the service did not bind.
    let s = UdpSocket::bind(("127.0.0.1", port)).expect("the DHCP port is free");
    drop(s);
    server.stop().expect("stop");
}

#[test]
fn invalid_config_is_refused_by_run() {
    let mut cfg = relay_config(free_udp_port(), 6);
    cfg.networks[0].range_end = Some(Ipv4Addr::new(127, 78, 0, 1));
    let server = Server::start(
        None,
        cfg,
        Arc::new(MemoryLeaseStore::new()),
        Arc::new(StaticBootFacts::new()),
        Arc::new(CollectingObserver::new()),
    );
    let err = server.stop().expect_err("invalid config");
    assert!(err.to_string().contains("range_end"), "{err}");
}

#[test]
fn options_reach_the_relay_intact() {
    let port = free_udp_port();
    let server = Server::start(
        None,
        relay_config(port, 7),
        Arc::new(MemoryLeaseStore::new()),
        Arc::new(StaticBootFacts::new()),
        Arc::new(CollectingObserver::new()),
    );
    let relay = Relay::new(Ipv4Addr::new(127, 77, 7, 1), port);
    relay.send(
        Pkt::new(MessageType::Discover, mac(1))
            .vendor("PXEClient:Arch:00007:UNDI:003000")
            .arch(7)
            .opt(DhcpOption::MaxMessageSize(1400)),
    );
    let (offer, _, _) = relay.recv().expect("offer");
    assert_eq!(file_of(&offer).as_deref(), Some("ipxe.efi"));
    assert_eq!(offer.siaddr(), Ipv4Addr::LOCALHOST);
    server.stop().expect("stop");
}

/// Two listening sockets, each sent a burst larger than what the loop reads
/// from one socket per wake-up: every DISCOVER on both gets its OFFER, with
/// distinct addresses, from the one loop that reads both sockets.
#[test]
fn bursts_on_two_sockets_are_all_answered() {
    let (port_a, port_b) = (free_udp_port(), free_udp_port());
    let toml = format!(
        r#"
        listen = ["127.0.0.1:{port_a}", "127.0.0.1:{port_b}"]
        reply_timeout_ms = 5000
        [[network]]
        name = "rack-a"
        subnet = "127.77.8.0/24"
        relay = true
        range_start = "127.77.8.10"
        range_end = "127.77.8.250"
        server_address = "127.0.0.1"
        [[network]]
        name = "rack-b"
        subnet = "127.77.9.0/24"
        relay = true
        range_start = "127.77.9.10"
        range_end = "127.77.9.250"
        server_address = "127.0.0.1"
        "#
    );
    let cfg: DhcpConfig = toml::from_str(&toml).expect("config");
    let server = Server::start(
        None,
        cfg,
        Arc::new(MemoryLeaseStore::new()),
        Arc::new(StaticBootFacts::new()),
        Arc::new(CollectingObserver::new()),
    );
    // More than one burst (64) per socket.
    const N: u32 = 100;
    let relays = [
        Relay::new(Ipv4Addr::new(127, 77, 8, 1), port_a),
        Relay::new(Ipv4Addr::new(127, 77, 9, 1), port_b),
    ];
    // Read while sending, so the relays' own socket buffers never overflow.
    let readers: Vec<_> = relays
        .iter()
        .map(|r| {
            let sock = r.sock.try_clone().expect("clone relay socket");
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 1500];
                while got.len() < N as usize {
                    let Ok((n, _)) = sock.recv_from(&mut buf) else {
                        break;
                    };
                    let m = decode(&buf[..n]);
                    assert_eq!(msg_type(&m), MessageType::Offer);
                    got.push(m.yiaddr());
                }
                got
            })
        })
        .collect();
    for i in 0..N {
        for (k, r) in relays.iter().enumerate() {
            r.send(Pkt::new(
                MessageType::Discover,
                mac(0x1000 * (k as u32 + 1) + i),
            ));
        }
    }
    for (k, reader) in readers.into_iter().enumerate() {
        let offers = reader.join().expect("reader");
        assert_eq!(offers.len(), N as usize, "socket {k}: offers missing");
        let distinct: std::collections::HashSet<_> = offers.iter().collect();
        assert_eq!(distinct.len(), N as usize, "socket {k}: duplicate offers");
        let net = [8, 9][k];
        assert!(offers.iter().all(|a| a.octets()[..3] == [127, 77, net]));
    }
    server.stop().expect("stop");
}

/// Records on which thread the tasks it spawns run.
struct SpawningObserver {
    threads: Arc<std::sync::Mutex<Vec<String>>>,
}

impl anvil_dhcp::DhcpObserver for SpawningObserver {
    fn observe(&self, _ev: anvil_dhcp::DhcpObservation) {
        let threads = self.threads.clone();
        tokio::spawn(async move {
            let name = std::thread::current().name().unwrap_or("").to_string();
            threads.lock().expect("lock").push(name);
        });
    }
}

/// The service loop has a thread and runtime of its own (`anvil-dhcp`), but
/// what the observer spawns runs on the caller's runtime, as it did when the
/// loop ran there.
#[test]
fn the_observer_spawns_on_the_callers_runtime() {
    let port = free_udp_port();
    let threads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let server = Server::start(
        None,
        relay_config(port, 10),
        Arc::new(MemoryLeaseStore::new()),
        Arc::new(StaticBootFacts::new()),
        Arc::new(SpawningObserver {
            threads: threads.clone(),
        }),
    );
    let relay = Relay::new(Ipv4Addr::new(127, 77, 10, 1), port);
    relay.send(Pkt::new(MessageType::Discover, mac(0x4242)));
    let (offer, _, _) = relay.recv().expect("an OFFER");
    assert_eq!(msg_type(&offer), MessageType::Offer);
    let deadline = Instant::now() + Duration::from_secs(3);
    // DISCOVER and OFFER observed.
    while threads.lock().expect("lock").len() < 2 {
        assert!(Instant::now() < deadline, "observer tasks did not run");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.stop().expect("stop");
    let threads = threads.lock().expect("lock").clone();
    assert!(
        threads.iter().all(|t| t != "anvil-dhcp"),
        "spawned on the DHCP thread: {threads:?}"
    );
}
