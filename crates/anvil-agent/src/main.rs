//! `anvil-agent`: the main process of Anvil's ramdisk (PID 1 after /init,
//! see docs/ramdisk.md). It brings up the network by DHCP on the interface
//! the machine booted from and talks to Anvil only outward: with a per-boot
//! token (commissioning and later purposes) it follows the agent protocol
//! (docs/agent-protocol.md); without one (a discovery boot) it calls home
//! like the discovery ramdisk and powers off.
//!
//! As PID 1 it never exits: whatever happens, it prints why on the console
//! (`anvil-agent: …`) and powers off, reboots or stays up.

mod agent;
mod backoff;
mod client;
mod cmdline;
mod deploy;
mod disk;
mod fetch;
mod hwtest;
mod imagewrite;
mod inventory;
mod ledger;
mod net;
mod nvme;
mod ptable;
mod raid;
mod system;

use std::time::Duration;

use backoff::{Backoff, Jitter};
use client::Client;

/// Console output, always prefixed `anvil-agent:` so it stands out among
/// the kernel's messages on the serial console.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        println!("anvil-agent: {}", format_args!($($arg)*))
    };
}

fn main() {
    log!(
        "{} starting at uptime {:.2} s (pid {})",
        env!("CARGO_PKG_VERSION"),
        system::uptime(),
        std::process::id()
    );
    std::panic::set_hook(Box::new(|info| log!("internal error: {info}")));
    let finish = match std::panic::catch_unwind(run) {
        Ok(f) => f,
        Err(_) => agent::Finish::Halt("the agent panicked (see above)".into()),
    };
    match finish {
        // Outside the ramdisk (a test, or an operator trying the agent on a
        // running system) the agent must never take the machine down.
        agent::Finish::PowerOff | agent::Finish::Reboot if std::process::id() != 1 => {
            log!(
                "not PID 1: not {} this system; exiting",
                if finish == agent::Finish::Reboot {
                    "rebooting"
                } else {
                    "powering off"
                }
            );
            std::process::exit(0);
        }
        agent::Finish::PowerOff | agent::Finish::Reboot => {
            let reboot = finish == agent::Finish::Reboot;
            let e = system::power(reboot);
            log!(
                "cannot {}: {e}",
                if reboot { "reboot" } else { "power off" }
            );
        }
        agent::Finish::Halt(why) => log!("{why}; staying up, making no more calls"),
    }
    if std::process::id() == 1 {
        system::stay_up();
    }
    std::process::exit(1);
}

/// Overrides for running the agent outside its ramdisk (the integration
/// tests run the real binary as a child process): `ANVIL_AGENT_CMDLINE`
/// instead of /proc/cmdline, `ANVIL_AGENT_ROOT` as the directory holding
/// `sys/` and `dev/` (default `/`), `ANVIL_AGENT_NO_NET=1` to use the
/// network as it is instead of DHCP on the boot interface.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn run() -> agent::Finish {
    let text = env("ANVIL_AGENT_CMDLINE")
        .unwrap_or_else(|| std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let params = match cmdline::parse(&text) {
        Ok(p) => p,
        Err(e) => return agent::Finish::Halt(format!("bad kernel command line: {e}")),
    };
    log!(
        "anvil.url={} mac={} token={}",
        params.url,
        params.mac,
        if params.token.is_some() {
            "yes"
        } else {
            "none (discovery)"
        }
    );
    let ip = if env("ANVIL_AGENT_NO_NET").is_some() {
        log!("ANVIL_AGENT_NO_NET: using the network as it is");
        String::new()
    } else {
        let (iface, ip) = bring_up_network(&params.mac);
        // Other NICs come up too (without addresses): LLDP needs a link.
        net::bring_up_all(&iface);
        ip
    };
    match &params.token {
        Some(token) => {
            let client = Client::new(&params.url, Some(token));
            let ctx = deploy::Ctx {
                root: env("ANVIL_AGENT_ROOT").map_or_else(|| "/".into(), Into::into),
                fetch: fetch::Fetcher::new(Some(token)),
                ssh_port: 22,
            };
            agent::Agent::new(client, params.mac.clone(), params.lldp_window_secs, ctx).run()
        }
        None => discovery_callhome(&params.url, &params.mac, &ip),
    }
}

/// The boot interface with an address, however long it takes: DHCP is
/// retried with backoff (a ramdisk without network has nothing else to do).
fn bring_up_network(mac: &str) -> (String, String) {
    let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
    let mut jitter = Jitter::from_entropy();
    loop {
        match net::wait_for_interface(mac, Duration::from_secs(20)).and_then(|iface| {
            log!(
                "interface {iface} has {mac}; DHCP at uptime {:.2} s",
                system::uptime()
            );
            net::dhcp(&iface).map(|lease| (iface, lease))
        }) {
            Ok((iface, lease)) => {
                log!(
                    "DHCP: {iface} {}/{} router {} server {} at uptime {:.2} s",
                    lease.ip,
                    lease.mask,
                    if lease.router.is_empty() {
                        "none"
                    } else {
                        &lease.router
                    },
                    lease.server,
                    system::uptime()
                );
                return (iface, lease.ip);
            }
            Err(e) => {
                let d = backoff.next_delay(jitter.unit());
                log!("network: {e}; retry in {:.0} s", d.as_secs_f64());
                std::thread::sleep(d);
            }
        }
    }
}

/// A discovery boot (no token): report this machine like the discovery
/// ramdisk does, then power off.
fn discovery_callhome(url: &str, mac: &str, ip: &str) -> agent::Finish {
    let macs: Vec<String> = net::physical_interfaces()
        .iter()
        .filter_map(|i| std::fs::read_to_string(format!("/sys/class/net/{i}/address")).ok())
        .filter_map(|a| cmdline::normalise_mac(a.trim()))
        .collect();
    let body = serde_json::json!({
        "mac": mac, "macs": macs, "ip": ip, "uptime_secs": system::uptime(),
    });
    let mut client = Client::new(url, None);
    match client.post::<_, serde_json::Value>(
        "discovery/callhome",
        &body,
        Some(Duration::from_secs(120)),
    ) {
        Ok(ack) => {
            log!("called home: {ack}");
            println!("ANVIL-CALLHOME-OK");
            agent::Finish::PowerOff
        }
        Err(e) => {
            println!("ANVIL-CALLHOME-FAILED: {e}");
            agent::Finish::PowerOff
        }
    }
}
