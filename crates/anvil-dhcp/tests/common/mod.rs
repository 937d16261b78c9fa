//! Helpers shared by the test binaries: a small DHCP client built on
//! dhcproto, and configurations.
#![allow(dead_code)]

use anvil_dhcp::{BootNetwork, DhcpConfig, Listener, RecvMeta};
use anvil_types::MacAddr;
use dhcproto::v4::{
    self, Decodable, Decoder, DhcpOption, Encodable, Encoder, Flags, Message, MessageType,
    OptionCode,
};
use std::net::{Ipv4Addr, SocketAddrV4};

pub fn mac(last: u32) -> MacAddr {
    let b = last.to_be_bytes();
    MacAddr([0x52, 0x54, 0x00, b[1], b[2], b[3]])
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

/// A client message under construction.
pub struct Pkt {
    pub msg: Message,
}

impl Pkt {
    pub fn new(t: MessageType, m: MacAddr) -> Self {
        let mut msg = Message::new_with_id(
            0x1234_5678,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &m.0,
        );
        msg.opts_mut().insert(DhcpOption::MessageType(t));
        Pkt { msg }
    }
    pub fn opt(mut self, o: DhcpOption) -> Self {
        self.msg.opts_mut().insert(o);
        self
    }
    pub fn requested(self, a: Ipv4Addr) -> Self {
        self.opt(DhcpOption::RequestedIpAddress(a))
    }
    pub fn server_id(self, a: Ipv4Addr) -> Self {
        self.opt(DhcpOption::ServerIdentifier(a))
    }
    pub fn ciaddr(mut self, a: Ipv4Addr) -> Self {
        self.msg.set_ciaddr(a);
        self
    }
    pub fn giaddr(mut self, a: Ipv4Addr) -> Self {
        self.msg.set_giaddr(a);
        self
    }
    pub fn broadcast(mut self) -> Self {
        self.msg.set_flags(Flags::default().set_broadcast());
        self
    }
    pub fn prl(self, codes: &[u8]) -> Self {
        self.opt(DhcpOption::ParameterRequestList(
            codes.iter().map(|c| OptionCode::from(*c)).collect(),
        ))
    }
    pub fn vendor(self, v: &str) -> Self {
        self.opt(DhcpOption::ClassIdentifier(v.as_bytes().to_vec()))
    }
    pub fn arch(self, a: u16) -> Self {
        self.opt(DhcpOption::ClientSystemArchitecture(v4::Architecture(a)))
    }
    pub fn user_class(self, u: &str) -> Self {
        self.opt(DhcpOption::UserClass(u.as_bytes().to_vec()))
    }
    pub fn bytes(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.msg
            .encode(&mut Encoder::new(&mut buf))
            .expect("encode test packet");
        buf
    }
}

pub fn decode(bytes: &[u8]) -> Message {
    Message::decode(&mut Decoder::new(bytes)).expect("reply decodes")
}

pub fn msg_type(m: &Message) -> MessageType {
    m.opts().msg_type().expect("reply has a message type")
}

pub fn opt_bytes(bytes: &[u8], code: u8) -> Option<Vec<u8>> {
    anvil_dhcp::wire::raw_options(bytes)
        .into_iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v)
}

pub fn opt_codes(bytes: &[u8]) -> Vec<u8> {
    anvil_dhcp::wire::raw_options(bytes)
        .into_iter()
        .map(|(c, _)| c)
        .collect()
}

/// Meta of a broadcast received on the lab network's interface.
pub fn direct(interface: &str, local: Ipv4Addr) -> RecvMeta {
    RecvMeta {
        listener: Listener::Dhcp,
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        local_port: 67,
        ifindex: Some(7),
        interface: Some(interface.to_string()),
        local_addr: Some(local),
    }
}

pub fn relayed(from: Ipv4Addr) -> RecvMeta {
    RecvMeta {
        listener: Listener::Dhcp,
        src: SocketAddrV4::new(from, 67),
        local_port: 67,
        ifindex: Some(1),
        interface: Some("uplink".into()),
        local_addr: Some(ip("192.0.2.10")),
    }
}

pub fn network(toml: &str) -> BootNetwork {
    toml::from_str(toml).expect("network TOML")
}

/// `lab` (direct, eth1, 10.0.0.0/24, range .100-.109) and `rack2` (relayed,
/// 10.2.0.0/24, range .10-.200) and `site` (proxy, eth2, 10.9.0.0/24).
pub fn config() -> DhcpConfig {
    let cfg: toml::Value = toml::from_str(
        r#"
        [[network]]
        name = "lab"
        subnet = "10.0.0.0/24"
        interface = "eth1"
        range_start = "10.0.0.100"
        range_end = "10.0.0.109"
        router = "10.0.0.1"
        dns = ["10.0.0.2", "10.0.0.3"]
        domain = "lab.example"
        ntp = ["10.0.0.4"]
        mtu = 1500
        server_address = "10.0.0.2"

        [[network]]
        name = "rack2"
        subnet = "10.2.0.0/24"
        relay = true
        range_start = "10.2.0.10"
        range_end = "10.2.0.200"
        router = "10.2.0.1"
        dns = ["10.0.0.2"]
        server_address = "192.0.2.10"
        lease_time_secs = 7200

        [[network]]
        name = "site"
        subnet = "10.9.0.0/24"
        mode = "proxy"
        interface = "eth2"
        server_address = "10.9.0.5"
        "#,
    )
    .expect("config TOML");
    let c: DhcpConfig = cfg.try_into().expect("config");
    c.validate().expect("valid config");
    c
}

/// The `file` field as text (dhcproto keeps the terminating NUL).
pub fn file_of(m: &Message) -> Option<String> {
    let f = m.fname()?;
    let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
    Some(String::from_utf8_lossy(&f[..end]).into_owned())
}

/// A DHCP server running on a thread of its own (optionally inside a network
/// namespace), stopped and joined on drop.
pub struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), anvil_dhcp::DhcpError>>>,
}

impl Server {
    pub fn start(
        netns: Option<&str>,
        config: DhcpConfig,
        store: std::sync::Arc<dyn anvil_dhcp::LeaseStore>,
        facts: std::sync::Arc<dyn anvil_dhcp::BootFacts>,
        observer: std::sync::Arc<dyn anvil_dhcp::DhcpObserver>,
    ) -> Server {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let ns = netns.map(str::to_string);
        let thread = std::thread::spawn(move || {
            if let Some(ns) = ns {
                enter_netns(&ns);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(anvil_dhcp::run(
                config,
                store,
                facts,
                observer,
                async move {
                    let _ = rx.await;
                },
            ))
        });
        // The sockets are bound within milliseconds; clients retransmit anyway.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Server {
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Stops the server and returns what `run` returned.
    pub fn stop(mut self) -> Result<(), anvil_dhcp::DhcpError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), anvil_dhcp::DhcpError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().expect("server thread panicked"),
            None => Ok(()),
        }
    }

    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Moves the calling thread into a network namespace made by `ip netns add`.
pub fn enter_netns(name: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/var/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("open netns {name}: {e}"));
    // SAFETY: a valid namespace fd; setns only affects this thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

/// A free UDP port on 127.0.0.1 (racy in theory, fine for tests).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind an ephemeral port")
        .port()
}
