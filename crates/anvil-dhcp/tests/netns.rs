//! Real DHCP clients against the real service, over a veth pair between two
//! network namespaces this test creates (and always deletes): the server runs
//! on a thread that entered the server namespace, the clients (busybox
//! udhcpc, ISC dhclient, a hand-written PXE client) in the client namespace.
//! Addresses are 10.77.x.y, inside those namespaces only.
//!
//! Needs root, iproute2, busybox-static and isc-dhcp-client. Without them the
//! tests FAIL (they are the only check of the socket layer; a silent pass
//! would hide that).

mod common;

use anvil_dhcp::{
    CollectingObserver, DhcpConfig, DhcpMessageKind, LeaseState, MemoryLeaseStore, StaticBootFacts,
};
use common::*;
use dhcproto::v4::{DhcpOption, MessageType};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

fn must(cmd: &str, args: &[&str]) {
    let o = run(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Fails (not skips) with what is missing. Checked once per test binary.
fn require_tools() {
    static CHECKED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    CHECKED.get_or_init(check_tools);
}

fn check_tools() {
    let probe = format!("anvil-dhcp-probe-{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .output()
        .is_ok_and(|o| o.status.success());
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    assert!(
        ok,
        "these tests need root and `ip netns` (Debian: iproute2) to create network namespaces"
    );
    for (bin, pkg) in [
        ("busybox", "busybox-static"),
        ("dhclient", "isc-dhcp-client"),
    ] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{bin} not found: apt-get install -y {pkg}"
        );
    }
}

/// A network namespace, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(name: String) -> Ns {
        let _ = run("ip", &["netns", "del", &name]);
        must("ip", &["netns", "add", &name]);
        Ns(name)
    }
    fn ip(&self, args: &[&str]) {
        let mut a = vec!["-n", self.0.as_str()];
        a.extend_from_slice(args);
        must("ip", &a);
    }
    fn exec(&self, cmd: &[&str]) -> Output {
        let mut a = vec!["netns", "exec", self.0.as_str()];
        a.extend_from_slice(cmd);
        run("ip", &a)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Server namespace (`vs`, 10.77.<n>.1/24) and client namespace (`vc`, no
/// address) joined by a veth pair.
struct Lab {
    n: u8,
    cli: Ns,
    srv: Ns,
    dir: tempfile::TempDir,
    /// Processes the test started in the background (dhclient), by PID.
    pids: Vec<PathBuf>,
}

impl Lab {
    fn new(n: u8, client_mac: &str) -> Lab {
        require_tools();
        let id = format!("{}-{n}", std::process::id());
        let srv = Ns::new(format!("anvil-dhcp-s-{id}"));
        let cli = Ns::new(format!("anvil-dhcp-c-{id}"));
        srv.ip(&["link", "set", "lo", "up"]);
        cli.ip(&["link", "set", "lo", "up"]);
        srv.ip(&[
            "link", "add", "vs", "type", "veth", "peer", "name", "vc", "netns", &cli.0,
        ]);
        srv.ip(&["addr", "add", &format!("10.77.{n}.1/24"), "dev", "vs"]);
        srv.ip(&["link", "set", "vs", "up"]);
        cli.ip(&["link", "set", "vc", "address", client_mac]);
        cli.ip(&["link", "set", "vc", "up"]);
        Lab {
            n,
            cli,
            srv,
            dir: tempfile::tempdir().expect("tempdir"),
            pids: Vec::new(),
        }
    }

    fn a(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.n, host)
    }

    fn config(&self, mode: &str) -> DhcpConfig {
        let n = self.n;
        let body = if mode == "proxy" {
            format!(
                r#"
                [[network]]
                name = "lab"
                subnet = "10.77.{n}.0/24"
                mode = "proxy"
                interface = "vs"
                server_address = "10.77.{n}.1"
                "#
            )
        } else {
            format!(
                r#"
                [[network]]
                name = "lab"
                subnet = "10.77.{n}.0/24"
                interface = "vs"
                range_start = "10.77.{n}.100"
                range_end = "10.77.{n}.150"
                router = "10.77.{n}.1"
                dns = ["10.77.{n}.53", "10.77.{n}.54"]
                domain = "lab.example"
                ntp = ["10.77.{n}.123"]
                mtu = 1400
                lease_time_secs = 600
                server_address = "10.77.{n}.1"
                "#
            )
        };
        let c: DhcpConfig = toml::from_str(&body).expect("config");
        c.validate().expect("valid");
        c
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn script(&self, name: &str, body: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
        must("chmod", &["+x", &p.to_string_lossy()]);
        p.to_string_lossy().into_owned()
    }

    /// Runs busybox udhcpc until it is bound (or gives up: `-n`), then stops
    /// it with SIGTERM, on which `-R` makes it send a RELEASE. (busybox 1.35's
    /// `-q -R` quits before it counts as bound and releases nothing.) Returns
    /// whether it got a lease and the environment of its `bound` call.
    fn udhcpc(&self, extra: &[&str]) -> (bool, HashMap<String, String>) {
        let out = self.path("udhcpc-bound.env");
        let _ = std::fs::remove_file(&out);
        let script = self.script(
            "udhcpc.sh",
            &format!(
                r#"case "$1" in
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$subnet" dev "$interface"; env | sort > {out}.tmp; mv {out}.tmp {out} ;;
  deconfig) ip addr flush dev "$interface" ;;
esac"#,
                out = out.display()
            ),
        );
        let mut args = vec![
            "netns",
            "exec",
            self.cli.0.as_str(),
            "busybox",
            "udhcpc",
            "-i",
            "vc",
            "-f",
            "-R",
            "-n",
            "-t",
            "6",
            "-T",
            "1",
            "-A",
            "1",
            "-s",
            &script,
            "-O",
            "mtu",
            "-O",
            "ntpsrv",
            "-O",
            "hostname",
        ];
        args.extend_from_slice(extra);
        let mut child = Command::new("ip")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start udhcpc");
        let deadline = Instant::now() + Duration::from_secs(20);
        let bound = loop {
            if out.exists() {
                break true;
            }
            if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // `ip netns exec` execs udhcpc, so this is udhcpc's own PID.
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: signalling a child this test spawned and has not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = child.wait();
        (bound, read_env(&out))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Only processes this test started, by the PID they recorded.
        for pidfile in &self.pids {
            if let Ok(pid) = std::fs::read_to_string(pidfile) {
                let pid = pid.trim();
                if !pid.is_empty() {
                    let _ = Command::new("kill").arg(pid).output();
                }
            }
        }
    }
}

fn read_env(p: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

fn wait_for_state(store: &MemoryLeaseStore, ip: Ipv4Addr, state: LeaseState) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = store.get("lab", ip).map(|l| l.state);
        if got == Some(state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lease {ip}: expected {state:?}, got {got:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn udhcpc_gets_address_and_options_and_release_frees_it() {
    let lab = Lab::new(21, "52:54:00:77:15:01");
    let store = Arc::new(MemoryLeaseStore::new());
    let obs = Arc::new(CollectingObserver::new());
    let server = Server::start(
        Some(&lab.srv.0),
        lab.config("full"),
        store.clone(),
        Arc::new(StaticBootFacts::new()),
        obs.clone(),
    );
    let (ok, env) = lab.udhcpc(&[]);
    assert!(ok, "udhcpc got no lease: {env:?}");
    let a = lab.a(100);
    assert_eq!(
        env.get("ip").map(String::as_str),
        Some(a.to_string().as_str())
    );
    assert_eq!(env.get("subnet").map(String::as_str), Some("255.255.255.0"));
    assert_eq!(env.get("router").cloned(), Some(lab.a(1).to_string()));
    assert_eq!(
        env.get("dns").cloned(),
        Some(format!("{} {}", lab.a(53), lab.a(54)))
    );
    assert_eq!(env.get("mtu").map(String::as_str), Some("1400"));
    assert_eq!(env.get("domain").map(String::as_str), Some("lab.example"));
    assert_eq!(env.get("ntpsrv").cloned(), Some(lab.a(123).to_string()));
    assert_eq!(env.get("lease").map(String::as_str), Some("600"));
    assert_eq!(env.get("serverid").cloned(), Some(lab.a(1).to_string()));
    assert_eq!(env.get("boot_file"), None, "udhcpc is not a PXE client");
    // -R: udhcpc released on exit; the release is committed.
    wait_for_state(&store, a, LeaseState::Released);
    server.stop().expect("clean stop");
    let kinds: Vec<_> = obs.events().iter().map(|e| e.kind).collect();
    assert!(kinds.starts_with(&[
        DhcpMessageKind::Discover,
        DhcpMessageKind::Offer,
        DhcpMessageKind::Request,
        DhcpMessageKind::Ack
    ]));
    assert_eq!(kinds.last(), Some(&DhcpMessageKind::Release));
}

#[test]
fn a_reserved_mac_gets_its_address_and_hostname() {
    let lab = Lab::new(22, "52:54:00:77:16:42");
    let store = Arc::new(MemoryLeaseStore::new());
    let facts = StaticBootFacts::new().with_host(
        "52:54:00:77:16:42".parse().expect("mac"),
        Some(lab.a(42)),
        Some("node-42"),
    );
    let obs = Arc::new(CollectingObserver::new());
    let server = Server::start(
        Some(&lab.srv.0),
        lab.config("full"),
        store.clone(),
        Arc::new(facts),
        obs.clone(),
    );
    let (ok, env) = lab.udhcpc(&[]);
    assert!(ok, "no lease");
    assert_eq!(env.get("ip").cloned(), Some(lab.a(42).to_string()));
    assert_eq!(env.get("hostname").map(String::as_str), Some("node-42"));
    wait_for_state(&store, lab.a(42), LeaseState::Released);
    server.stop().expect("stop");
    assert!(obs.events().iter().all(|e| e.known));
}

#[test]
fn udhcpc_posing_as_bios_pxe_gets_the_boot_file() {
    let lab = Lab::new(23, "52:54:00:77:17:01");
    let server = Server::start(
        Some(&lab.srv.0),
        lab.config("full"),
        Arc::new(MemoryLeaseStore::new()),
        Arc::new(StaticBootFacts::new()),
        Arc::new(CollectingObserver::new()),
    );
    let (ok, env) = lab.udhcpc(&["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"]);
    assert!(ok, "no lease");
    assert_eq!(
        env.get("boot_file").map(String::as_str),
        Some("undionly.kpxe")
    );
    assert_eq!(env.get("siaddr").cloned(), Some(lab.a(1).to_string()));
    server.stop().expect("stop");
}

#[test]
fn dhclient_gets_address_and_options_and_release_frees_it() {
    let mut lab = Lab::new(24, "52:54:00:77:18:01");
    let store = Arc::new(MemoryLeaseStore::new());
    let server = Server::start(
        Some(&lab.srv.0),
        lab.config("full"),
        store.clone(),
        Arc::new(StaticBootFacts::new()),
        Arc::new(CollectingObserver::new()),
    );
    let log = lab.path("dhclient.env");
    let script = lab.script(
        "dhclient.sh",
        &format!(
            r#"{{ echo "reason=$reason"; env | grep -E '^(new_|interface=)' | sort; echo "--"; }} >> {log}
case "$reason" in
  PREINIT) ip link set dev "$interface" up ;;
  BOUND|RENEW|REBIND|REBOOT) ip addr flush dev "$interface"; ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface" ;;
  RELEASE|EXPIRE|FAIL|STOP) ip addr flush dev "$interface" ;;
esac
exit 0"#,
            log = log.display()
        ),
    );
    let conf = lab.path("dhclient.conf");
    std::fs::write(
        &conf,
        "request subnet-mask, broadcast-address, routers, domain-name, \
         domain-name-servers, interface-mtu, ntp-servers;\ntimeout 20;\nretry 1;\n",
    )
    .expect("conf");
    let leases = lab.path("dhclient.leases");
    let pid = lab.path("dhclient.pid");
    lab.pids.push(pid.clone());
    let (conf, leases, pid) = (
        conf.to_string_lossy().into_owned(),
        leases.to_string_lossy().into_owned(),
        pid.to_string_lossy().into_owned(),
    );
    let common = [
        "-cf",
        conf.as_str(),
        "-lf",
        leases.as_str(),
        "-pf",
        pid.as_str(),
        "-sf",
        script.as_str(),
    ];
    let mut args = vec!["dhclient", "-1", "-v"];
    args.extend_from_slice(&common);
    args.push("vc");
    let o = lab.cli.exec(&args);
    assert!(
        o.status.success(),
        "dhclient failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(&log).expect("dhclient script ran");
    let bound: HashMap<String, String> = text
        .split("--\n")
        .find(|b| b.contains("reason=BOUND"))
        .unwrap_or_else(|| panic!("no BOUND in {text}"))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect();
    let a = lab.a(100);
    assert_eq!(bound.get("new_ip_address").cloned(), Some(a.to_string()));
    assert_eq!(
        bound.get("new_subnet_mask").map(String::as_str),
        Some("255.255.255.0")
    );
    assert_eq!(
        bound.get("new_routers").cloned(),
        Some(lab.a(1).to_string())
    );
    assert_eq!(
        bound.get("new_domain_name_servers").cloned(),
        Some(format!("{} {}", lab.a(53), lab.a(54)))
    );
    assert_eq!(
        bound.get("new_interface_mtu").map(String::as_str),
        Some("1400")
    );
    assert_eq!(
        bound.get("new_domain_name").map(String::as_str),
        Some("lab.example")
    );
    assert_eq!(
        bound.get("new_ntp_servers").cloned(),
        Some(lab.a(123).to_string())
    );
    assert_eq!(
        bound.get("new_dhcp_lease_time").map(String::as_str),
        Some("600")
    );
    wait_for_state(&store, a, LeaseState::Bound);

    // `dhclient -r` releases and stops the dhclient started above.
    let mut args = vec!["dhclient", "-r", "-v"];
    args.extend_from_slice(&common);
    args.push("vc");
    let o = lab.cli.exec(&args);
    assert!(o.status.success(), "dhclient -r failed");
    wait_for_state(&store, a, LeaseState::Released);
    server.stop().expect("stop");
}

/// A PXE client thread inside the client namespace.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        f()
    })
    .join()
    .expect("client thread")
}

fn client_socket(bind: SocketAddr) -> UdpSocket {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).expect("socket");
    s.set_reuse_address(true).expect("reuse");
    s.set_broadcast(true).expect("broadcast");
    s.bind_device(Some(b"vc")).expect("bind to vc");
    s.bind(&bind.into()).expect("bind");
    let u: UdpSocket = s.into();
    u.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    u
}

/// Sends until an answer of the wanted type arrives (3 tries).
fn exchange(sock: &UdpSocket, to: SocketAddr, pkt: &[u8], want: MessageType) -> Option<Vec<u8>> {
    for _ in 0..3 {
        sock.send_to(pkt, to).expect("send");
        let mut buf = [0u8; 1500];
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                break;
            };
            let m = decode(&buf[..n]);
            if m.opts().msg_type() == Some(want) {
                return Some(buf[..n].to_vec());
            }
        }
    }
    None
}

#[test]
fn proxy_mode_answers_pxe_and_ignores_udhcpc() {
    let lab = Lab::new(25, "52:54:00:77:19:01");
    let obs = Arc::new(CollectingObserver::new());
    let store = Arc::new(MemoryLeaseStore::new());
    let server = Server::start(
        Some(&lab.srv.0),
        lab.config("proxy"),
        store.clone(),
        Arc::new(StaticBootFacts::new()),
        obs.clone(),
    );
    // Plain udhcpc: no answer at all.
    let (ok, _) = lab.udhcpc(&["-t", "2"]);
    assert!(!ok, "udhcpc got a lease from a proxyDHCP server");

    // A PXE DISCOVER (UEFI x64) gets boot information and no address.
    let pxe_mac = mac(0x771902);
    let server_ip = lab.a(1);
    let offer = in_netns(&lab.cli.0, move || {
        let s = client_socket(SocketAddr::from(([0, 0, 0, 0], 68)));
        let p = Pkt::new(MessageType::Discover, pxe_mac)
            .broadcast()
            .vendor("PXEClient:Arch:00007:UNDI:003000")
            .arch(7)
            .prl(&[1, 3, 43, 60, 66, 67]);
        exchange(
            &s,
            SocketAddr::from(([255, 255, 255, 255], 67)),
            &p.bytes(),
            MessageType::Offer,
        )
    })
    .expect("a proxyDHCP OFFER");
    let m = decode(&offer);
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.siaddr(), server_ip);
    assert_eq!(file_of(&m).as_deref(), Some("ipxe.efi"));
    assert_eq!(opt_bytes(&offer, 60), Some(b"PXEClient".to_vec()));
    assert_eq!(opt_bytes(&offer, 43), Some(vec![6, 1, 8, 255]));
    assert_eq!(opt_bytes(&offer, 51), None);

    // With an address from the site's DHCP server, the REQUEST to 4011.
    lab.cli
        .ip(&["addr", "add", &format!("{}/24", lab.a(20)), "dev", "vc"]);
    let client_ip = lab.a(20);
    let ack = in_netns(&lab.cli.0, move || {
        let s = client_socket(SocketAddr::from((client_ip, 68)));
        let p = Pkt::new(MessageType::Request, pxe_mac)
            .ciaddr(client_ip)
            .vendor("PXEClient:Arch:00007:UNDI:003000")
            .arch(7)
            .opt(DhcpOption::ClientMachineIdentifier(vec![0; 17]));
        exchange(
            &s,
            SocketAddr::from((server_ip, 4011)),
            &p.bytes(),
            MessageType::Ack,
        )
    })
    .expect("an ACK from port 4011");
    let m = decode(&ack);
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(file_of(&m).as_deref(), Some("ipxe.efi"));
    assert_eq!(opt_bytes(&ack, 97), Some(vec![0; 17]));
    server.stop().expect("stop");

    assert!(store.leases().is_empty(), "proxyDHCP assigns nothing");
    let udhcpc_mac: anvil_types::MacAddr = "52:54:00:77:19:01".parse().expect("mac");
    assert!(
        obs.events().iter().all(|e| e.mac != udhcpc_mac),
        "udhcpc was not even observed"
    );
    assert!(
        obs.events()
            .iter()
            .any(|e| e.kind == DhcpMessageKind::Ack && e.mac == pxe_mac)
    );
}
