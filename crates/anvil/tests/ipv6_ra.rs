//! IPv6 router advertisements, on a veth pair inside a network namespace
//! the test creates (and removes): a Router Solicitation gets an RA at once.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

struct Netns(String);

impl Netns {
    fn create(name: &str) -> Netns {
        let ns = Netns(name.to_string());
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "cannot create a network namespace: this test needs root and iproute2 (Debian package iproute2)"
        );
        ns
    }
    fn exec(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

const SOLICIT: &str = r#"
import socket, sys, struct, time
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.SOL_SOCKET, 25, b"vb\0")  # SO_BINDTODEVICE
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.settimeout(1.0)
idx = socket.if_nametoindex("vb")
deadline = time.time() + 15
while time.time() < deadline:
    s.sendto(bytes([133, 0, 0, 0, 0, 0, 0, 0]), ("ff02::2", 0, 0, idx))
    try:
        while True:
            data, addr = s.recvfrom(1500)
            if data[0] == 134:
                print("RA hoplimit=%d flags=%d lifetime=%d" % (data[4], data[5], struct.unpack("!H", data[6:8])[0]))
                sys.exit(0)
    except socket.timeout:
        pass
print("no RA")
sys.exit(1)
"#;

#[test]
fn router_solicitation_gets_an_advertisement() {
    if std::env::var("ANVIL_SKIP_VM_TESTS").as_deref() == Ok("1") {
        eprintln!("skipped: ANVIL_SKIP_VM_TESTS=1");
        return;
    }
    let ns = Netns::create(&format!("anvil-ra-{}", std::process::id()));
    assert!(ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"]));
    assert!(ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"]));
    assert!(ns.exec(&[
        "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb"
    ]));
    assert!(ns.exec(&["ip", "link", "set", "lo", "up"]));
    assert!(ns.exec(&["ip", "link", "set", "va", "up"]));
    assert!(ns.exec(&["ip", "link", "set", "vb", "up"]));

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("anvil.toml");
    std::fs::write(
        &cfg,
        "[ipv6_ra]\ninterfaces = [\"va\"]\ninterval_secs = 30\n",
    )
    .unwrap();
    let mut anvil = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            common::ANVIL,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("serve.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", "-c", SOLICIT])
        .output()
        .unwrap();
    let _ = anvil.kill();
    let _ = anvil.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "no RA received: {text}\n{}\nserver log:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("RA hoplimit=64 flags=0 lifetime=0"), "{text}");
}
