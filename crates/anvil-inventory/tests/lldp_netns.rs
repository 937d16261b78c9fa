//! `listen_lldp` against Debian's real `lldpd`, over veth pairs between
//! network namespaces this test creates (and always deletes, killing the
//! lldpd it started by PID, even when an assertion fails). The listener runs
//! on a thread that entered the listening namespace with setns(2).
//!
//! Needs root, iproute2 and lldpd (scripts/test.sh installs them). Without
//! them the tests FAIL: they are the only check of the raw-socket layer.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anvil_inventory::{
    Error, ListenOptions, LldpNeighbor, connected_interfaces, listen_lldp, listen_lldp_with,
};

fn must(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} (needs iproute2 / lldpd): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by veth pairs, lldpd on some of the "switch"
/// ends. Everything is undone on drop.
struct Lab {
    switch_ns: String,
    host_ns: String,
    lldpd: Option<Child>,
    work: tempfile::TempDir,
    tag: String,
}

impl Lab {
    fn new(test: &str) -> Lab {
        let tag = format!("{}{}", test, std::process::id() % 100_000);
        let work = tempfile::tempdir().unwrap();
        // lldpd drops privileges and must still reach its control socket here.
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let lab = Lab {
            switch_ns: format!("anvil-inv-{tag}-sw"),
            host_ns: format!("anvil-inv-{tag}-host"),
            lldpd: None,
            work,
            tag,
        };
        for ns in [&lab.switch_ns, &lab.host_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            must("ip", &["netns", "add", ns]);
        }
        lab
    }

    /// Switch-side and host-side interface names of link `n` (≤ 15 bytes).
    fn names(&self, n: u8) -> (String, String) {
        (format!("s{n}{}", self.tag), format!("h{n}{}", self.tag))
    }

    /// A veth pair; the switch end is up with `mac`, the host end stays down
    /// (as in a freshly booted ramdisk).
    fn link(&self, n: u8, mac: &str) -> (String, String) {
        let (sw, host) = self.names(n);
        must(
            "ip",
            &[
                "link",
                "add",
                &sw,
                "netns",
                &self.switch_ns,
                "type",
                "veth",
                "peer",
                "name",
                &host,
                "netns",
                &self.host_ns,
            ],
        );
        must(
            "ip",
            &[
                "-n",
                &self.switch_ns,
                "link",
                "set",
                &sw,
                "address",
                mac,
                "up",
            ],
        );
        (sw, host)
    }

    /// Start lldpd in the switch namespace on `interface`, sending every second.
    fn start_lldpd(&mut self, interface: &str) {
        let conf = self.work.path().join("lldpd.conf");
        std::fs::write(
            &conf,
            format!(
                "configure system hostname anvil-tor-7\n\
                 configure lldp portidsubtype ifname\n\
                 configure lldp tx-interval 1\n\
                 configure ports {interface} lldp portdescription \"rack 7 port 12\"\n"
            ),
        )
        .unwrap();
        let log = File::create(self.work.path().join("lldpd.log")).unwrap();
        // `ip netns exec` execs lldpd: the child's PID is lldpd's.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.switch_ns, "lldpd", "-d", "-k", "-u"])
            .arg(self.work.path().join("lldpd.socket"))
            .args([
                "-I",
                interface,
                "-m",
                "192.0.2.7",
                "-S",
                "Anvil inventory test switch",
                "-O",
            ])
            .arg(&conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start lldpd (Debian: apt-get install lldpd)");
        self.lldpd = Some(child);
    }

    /// Run `f` on a thread inside the host namespace.
    fn in_host_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = File::open(format!("/run/netns/{}", self.host_ns)).unwrap();
        std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd; it affects this thread only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }

    fn lldpd_log(&self) -> String {
        std::fs::read_to_string(self.work.path().join("lldpd.log")).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.lldpd.take() {
            // lldpd forks a privilege-separated worker. Stop the worker first
            // so the monitor (our child) reaps it and exits on its own; then
            // make sure of the monitor. Both by PID, both started by us.
            let pid = child.id();
            let workers = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            for worker in workers
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a PID read from our child's children list.
                unsafe { libc::kill(worker, libc::SIGTERM) };
            }
            std::thread::sleep(Duration::from_millis(200));
            // SAFETY: kill(2) on our own child's PID.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.switch_ns, &self.host_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

#[test]
fn hears_lldpd_and_stops_at_the_first_neighbour() {
    let mut lab = Lab::new("a");
    let (sw, host) = lab.link(0, "02:00:5e:77:00:01");
    lab.start_lldpd(&sw);
    let started = Instant::now();
    // Named twice: still one socket, one entry.
    let interfaces = vec![host.clone(), host.clone()];
    let heard = lab.in_host_ns(move || listen_lldp(&interfaces, Duration::from_secs(30)));
    let elapsed = started.elapsed();
    let heard = heard.unwrap_or_else(|e| panic!("{e}\nlldpd log:\n{}", lab.lldpd_log()));
    assert_eq!(heard.len(), 1, "{heard:?}\nlldpd log:\n{}", lab.lldpd_log());
    let n: &LldpNeighbor = &heard[0];
    assert_eq!(n.interface, host);
    assert_eq!(n.system_name.as_deref(), Some("anvil-tor-7"));
    assert_eq!(
        n.system_description.as_deref(),
        Some("Anvil inventory test switch")
    );
    assert_eq!(n.port_id_subtype, "interface_name");
    assert_eq!(n.port_id, sw);
    assert_eq!(n.port_description.as_deref(), Some("rack 7 port 12"));
    assert_eq!(n.chassis_id_subtype, "mac_address");
    assert_eq!(n.chassis_id, "02:00:5e:77:00:01");
    assert_eq!(n.source_mac.as_deref(), Some("02:00:5e:77:00:01"));
    assert_eq!(n.mgmt_address.as_deref(), Some("192.0.2.7"));
    assert!(n.ttl > 0);
    // lldpd sends every second: stopping at the first neighbour returns long
    // before the 30 s window.
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    // The host end started down; listen_lldp brought it up.
    let link = Command::new("ip")
        .args(["-n", &lab.host_ns, "-o", "link", "show", "dev", &host])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains(",UP"), "{link}");
}

#[test]
fn without_early_stop_listens_the_window_and_keeps_one_entry_per_neighbour() {
    let mut lab = Lab::new("d");
    let (sw, host) = lab.link(0, "02:00:5e:77:00:04");
    lab.start_lldpd(&sw);
    let window = Duration::from_secs(3);
    let started = Instant::now();
    let interfaces = vec![host.clone()];
    let heard = lab
        .in_host_ns(move || {
            listen_lldp_with(
                &interfaces,
                &ListenOptions {
                    window,
                    stop_after_first: false,
                    bring_up: true,
                },
            )
        })
        .unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= window, "returned after {elapsed:?}");
    // About three frames from one neighbour: one entry.
    assert_eq!(heard.len(), 1, "{heard:?}\nlldpd log:\n{}", lab.lldpd_log());
    assert_eq!(heard[0].port_id, sw);
}

#[test]
fn listens_the_whole_window_when_an_interface_stays_silent() {
    let mut lab = Lab::new("b");
    let (sw0, host0) = lab.link(0, "02:00:5e:77:00:02");
    let (_sw1, host1) = lab.link(1, "02:00:5e:77:00:03");
    lab.start_lldpd(&sw0);
    let window = Duration::from_secs(4);
    let started = Instant::now();
    let interfaces = vec![host0.clone(), host1.clone()];
    let heard = lab
        .in_host_ns(move || {
            listen_lldp_with(
                &interfaces,
                &ListenOptions {
                    window,
                    ..ListenOptions::default()
                },
            )
        })
        .unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= window, "returned after {elapsed:?}");
    assert!(
        elapsed < window + Duration::from_secs(3),
        "returned after {elapsed:?}"
    );
    assert_eq!(heard.len(), 1, "{heard:?}\nlldpd log:\n{}", lab.lldpd_log());
    assert_eq!(heard[0].interface, host0);
    assert_eq!(heard[0].port_id, sw0);
}

#[test]
fn an_unknown_interface_is_a_clear_error() {
    let lab = Lab::new("c");
    let result = lab.in_host_ns(|| listen_lldp(&["nosuch0".to_string()], Duration::from_secs(1)));
    match result {
        Err(e @ Error::BadInterface { .. }) => {
            assert!(e.to_string().contains("nosuch0"), "{e}");
        }
        other => panic!("expected BadInterface, got {other:?}"),
    }
}

#[test]
fn connected_interfaces_brings_links_up_and_waits_for_carrier() {
    let lab = Lab::new("e");
    let (_sw0, host0) = lab.link(0, "02:00:5e:77:00:05");
    let (sw1, host1) = lab.link(1, "02:00:5e:77:00:06");
    // The far end of link 1 is down: its host end never gets carrier.
    must("ip", &["-n", &lab.switch_ns, "link", "set", &sw1, "down"]);

    let both = vec![host0.clone(), host1.clone()];
    let settle = Duration::from_secs(2);
    let started = Instant::now();
    let connected = lab
        .in_host_ns(move || connected_interfaces(&both, settle))
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(connected, vec![host0.clone()]);
    assert!(elapsed >= settle, "gave up after {elapsed:?}");

    // With every candidate connected it returns at once.
    let one = vec![host0.clone()];
    let started = Instant::now();
    let connected = lab
        .in_host_ns(move || connected_interfaces(&one, Duration::from_secs(10)))
        .unwrap();
    assert_eq!(connected, vec![host0]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let unknown = lab.in_host_ns(move || connected_interfaces(&["nosuch0".to_string()], settle));
    assert!(
        matches!(&unknown, Err(Error::Socket { interface, .. }) if interface == "nosuch0"),
        "{unknown:?}"
    );
}
